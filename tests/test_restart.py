"""Non-blocking restarts with a fake supervisord."""

from __future__ import annotations

from listeners.core.restart import Restarter
from listeners.core.supervisor import SupervisorError
from tests.fakes import FakeClock, FakeSupervisor, InlineWorker, state_event


def running(name: str) -> dict[str, object]:
    group, _, proc = name.partition(":")
    return {"group": group, "name": proc, "statename": "RUNNING", "pid": 10}


class TestRestarter:
    def test_stop_now_start_when_stopped_event_arrives(self):
        """restart() sends stop(wait=False) only; start follows the STOPPED event."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker())  # type: ignore[arg-type]
        assert r.restart("g:a")
        assert [("stop", ("g:a",))] == rpc.calls
        r.observe(state_event("STOPPED", "a", "g"))
        assert [("stop", ("g:a",)), ("start", ("g:a",))] == rpc.calls
        assert set() == r.pending()

    def test_second_request_while_pending_is_refused(self):
        """A restart already under way is not requested twice."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker())  # type: ignore[arg-type]
        assert (True, False) == (r.restart("g:a"), r.restart("g:a"))

    def test_not_running_process_is_started_directly(self):
        """If the process had already stopped, start it without waiting for an event."""
        rpc = FakeSupervisor({"g:a": {**running("g:a"), "statename": "EXITED"}})
        r = Restarter(rpc, InlineWorker())  # type: ignore[arg-type]
        r.restart("g:a")
        assert ["stop", "start"] == [c[0] for c in rpc.calls]
        assert set() == r.pending()

    def test_other_processes_events_are_ignored(self):
        """Only the pending process's stop triggers a start."""
        rpc = FakeSupervisor({"g:a": running("g:a"), "g:b": running("g:b")})
        r = Restarter(rpc, InlineWorker())  # type: ignore[arg-type]
        r.restart("g:a")
        r.observe(state_event("STOPPED", "b", "g"))
        r.observe(state_event("RUNNING", "a", "g", pid=3))
        assert ["stop"] == [c[0] for c in rpc.calls]

    def test_stop_failure_forgets_the_request(self):
        """An RPC error is logged and the process can be restarted again later."""
        rpc = FakeSupervisor({"g:a": running("g:a")})
        rpc.fail["stop"] = SupervisorError("down")
        r = Restarter(rpc, InlineWorker())  # type: ignore[arg-type]
        r.restart("g:a")
        assert set() == r.pending()

    def test_missed_stop_event_is_polled_after_a_while(self):
        """A STOPPED event that never comes is replaced by one getProcessInfo."""
        clock = FakeClock(0.0)
        rpc = FakeSupervisor({"g:a": running("g:a")})
        r = Restarter(rpc, InlineWorker(), clock=clock, poll_after=30)  # type: ignore[arg-type]
        r.restart("g:a")
        rpc.processes["g:a"]["statename"] = "STOPPED"
        clock.now = 10
        r.check()
        assert ["stop"] == [c[0] for c in rpc.calls]
        clock.now = 31
        r.check()
        assert ["stop", "process_info", "start"] == [c[0] for c in rpc.calls]
