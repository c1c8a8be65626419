"""Non-blocking restarts with a fake supervisord."""

from __future__ import annotations

from listeners.core.restart import (
    MassGuard,
    RestartBudget,
    Restarter,
    looks_misconfigured,
    restart_polling,
)
from listeners.core.supervisor import SupervisorError
from tests.fakes import FakeClock, FakeSupervisor, InlineWorker, state_event


def running(name: str) -> dict[str, object]:
    group, _, proc = name.partition(":")
    return {"group": group, "name": proc, "statename": "RUNNING", "pid": 10}


class TestRestarter:
    def test_stop_now_start_when_stopped_event_arrives(self):
        """restart() sends stop(wait=False) only; start follows the STOPPED event."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker())
        assert r.restart("g:a")
        assert [("stop", ("g:a",))] == rpc.calls
        r.observe(state_event("STOPPED", "a", "g"))
        assert [("stop", ("g:a",)), ("start", ("g:a",))] == rpc.calls
        assert set() == r.pending()

    def test_second_request_while_pending_is_refused(self):
        """A restart already under way is not requested twice."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker())
        assert (True, False) == (r.restart("g:a"), r.restart("g:a"))

    def test_not_running_process_is_started_directly(self):
        """If the process had already stopped, start it without waiting for an event."""
        rpc = FakeSupervisor({"g:a": {**running("g:a"), "statename": "EXITED"}})
        r = Restarter(rpc, InlineWorker())
        r.restart("g:a")
        assert ["stop", "start"] == [c[0] for c in rpc.calls]
        assert set() == r.pending()

    def test_other_processes_events_are_ignored(self):
        """Only the pending process's stop triggers a start."""
        rpc = FakeSupervisor({"g:a": running("g:a"), "g:b": running("g:b")})
        r = Restarter(rpc, InlineWorker())
        r.restart("g:a")
        r.observe(state_event("STOPPED", "b", "g"))
        r.observe(state_event("RUNNING", "a", "g", pid=3))
        assert ["stop"] == [c[0] for c in rpc.calls]

    def test_stop_failure_forgets_the_request(self):
        """An RPC error is logged and the process can be restarted again later."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        rpc.fail["stop"] = SupervisorError("down")
        r = Restarter(rpc, InlineWorker())
        r.restart("g:a")
        assert set() == r.pending()

    def test_missed_stop_event_is_polled_after_a_while(self):
        """A STOPPED event that never comes is replaced by one getProcessInfo."""
        clock = FakeClock(0.0)
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker(), clock=clock, poll_after=30)
        r.restart("g:a")
        rpc.processes["g:a"]["statename"] = "STOPPED"
        clock.now = 10
        r.check()
        assert ["stop"] == [c[0] for c in rpc.calls]
        clock.now = 31
        r.check()
        assert ["stop", "process_info", "start"] == [c[0] for c in rpc.calls]


class TestSafetyRules:
    def test_budget_allows_a_share_of_a_group_per_window(self):
        """25% of 8 is two distinct processes per window; a group of one may still restart."""
        clock = FakeClock(0.0)
        budget = RestartBudget(0, 0.25, 60.0, clock=clock)
        assert [True, True, False] == [budget.take("g", 8, f"g:{i}") for i in range(3)]
        assert budget.take("g", 8, "g:0")  # the same process again: --max-restarts' business
        assert budget.take("solo", 1, "solo:0")
        clock.now += 60
        assert budget.take("g", 8, "g:2")

    def test_a_count_budget_ignores_group_size(self):
        """--max-unavailable 1 means one at a time however big the group."""
        budget = RestartBudget(1, 0.0, 60.0, clock=FakeClock(0.0))
        assert [True, False] == [budget.take("g", 100, f"g:{i}") for i in range(2)]

    def test_mass_guard_holds_groups_mostly_over_once(self):
        """5 of 8 over is held (reported once); 4 of 8, or 1 of 1, is not."""
        guard = MassGuard()
        rows = {"php": [(18, 16)] * 5 + [(4, 16)] * 3, "leak": [(40, 16)]}
        held, new, resumed = guard.check(rows)
        assert ({"php"}, ["php"], []) == (held, [o.group for o in new], resumed)
        assert (5, 8, 18, 16) == (new[0].over, new[0].judged, new[0].median_bytes, 16)
        held, new, _ = guard.check(rows)
        assert ({"php"}, []) == (held, new)
        held, new, resumed = guard.check({"php": [(18, 16)] * 4 + [(4, 16)] * 4})
        assert (set(), ["php"]) == (held, resumed)
        assert not looks_misconfigured(1, 1)


class TestRestartPolling:
    def test_stop_poll_start(self):
        """Without state events: stop, poll until stopped, then start."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        stopped = lambda _s: rpc.processes["g:a"].update(statename="STOPPED")  # noqa: E731
        restart_polling(rpc, "g:a", sleep=stopped)
        assert ["stop", "process_info", "process_info", "start"] == [c for c, _ in rpc.calls]
