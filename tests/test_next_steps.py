"""Every alert says what to do next where there is something: one alert of each kind, made by
crashmail from the events and bus messages that make it in production, rendered as a person
reads it (mail, Slack, the file sink's text, Alertmanager's description)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from listeners.core import bus
from listeners.crashmail import Config, CrashMail
from listeners.notify.alert import KINDS, SUMMARY_STEPS, Alert, next_steps, render_text
from listeners.notify.flood import fold
from listeners.notify.outbox import Outbox
from listeners.notify.patterns import PRESETS
from tests.fakes import FakeClock, make_event

PHP_FATAL = (
    "PHP Fatal error:  Uncaught Error: Call to a member function send() on array in /app/q.php:9\n"
    "Stack trace:\n#0 {main}\n  thrown in /app/q.php on line 9\n"
)
#: The line each kind must carry; None: nothing is left to do, and no command is offered.
NEXT = {
    "crash": "See its output: supervisorctl tail -f web:web_0 stderr",
    "crash_loop": "fix the cause, then: supervisorctl restart loop:loop_0",
    "fatal": "fix the cause, then: supervisorctl start dead:dead_0",
    "backoff": "See its output: supervisorctl tail -f slow:slow_0 stderr",
    "memory_restart": "If it keeps growing, look for a leak; if it needs more, raise its limit",
    "restarts_exhausted": "Restart it by hand after fixing the leak: supervisorctl restart"
    " big:big_0",
    "hung": "Look at it, then: supervisorctl restart stuck:stuck_0",
    "restarts_held": "the measure or the ceiling looks wrong - try --measure pss",
    "events_lost": "Raise buffer_size in its [eventlistener:x] section",
    "log_pattern": "See its output: supervisorctl tail -f queue:queue_0 stderr",
    "action": None,
    "summary": "See their output:\n  supervisorctl tail -f web:web_1 stderr\n"
    "  supervisorctl tail -f web:web_2 stderr\n",
    "resolved": None,
}


class Made:
    """A crashmail with a fake clock, fed events one serial after another."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.outbox = Outbox(str(tmp_path / "o.sqlite"), clock=self.clock)
        self.reconciles: list[Callable[[list[dict[str, Any]]], None]] = []
        config = Config(host="h", loop=(3, 60.0), patterns=PRESETS["php"], burst=100)
        self.cm = CrashMail(
            config,
            self.outbox,
            clock=self.clock,
            boot="b",
            me="crashmail:crashmail",
            reconcile=self.reconciles.append,
        )
        self.cm.resync.begin()
        self.cm.resync.done()
        self.serial = 0

    def event(self, name: str, payload: str) -> None:
        self.serial += 1
        self.cm.handle(make_event(name, payload, serial=self.serial))

    def state(self, state: str, group: str, **fields: object) -> None:
        tokens = [f"processname:{group}_0", f"groupname:{group}", "from_state:RUNNING"]
        tokens += [f"{k}:{v}" for k, v in fields.items()]
        self.event(f"PROCESS_STATE_{state}", " ".join(tokens))

    def bus(self, type_: str, message: bus.Message) -> None:
        self.event("REMOTE_COMMUNICATION", f"type:{type_}\n{bus.encode(message)}")

    def alerts(self) -> dict[tuple[str, str], Alert]:
        """The first alert of each process and kind crashmail recorded."""
        found: dict[tuple[str, str], Alert] = {}
        for incident in self.outbox.due_incidents(10**12):
            found.setdefault((incident.alert.process, incident.alert.kind), incident.alert)
        return found


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Alert]:
    """Alerts of every kind crashmail makes, each from what makes it in production, by
    process and kind; the summary is flood control's fold of held crashes."""
    m = Made(tmp_path_factory.mktemp("next"))
    m.state("EXITED", "web", expected=0, pid=5)
    m.state("FATAL", "dead")
    for pid in (11, 12, 13):  # three exits within the --loop window: one crash_loop
        m.state("EXITED", "loop", expected=0, pid=pid)
        m.clock.now += 1
        m.state("RUNNING", "loop", pid=pid + 1)
    m.clock.now += 61  # RUNNING for a whole window: resolved
    m.cm.on_timer()
    m.event(
        "PROCESS_LOG_STDERR",
        f"processname:queue_0 groupname:queue pid:7 channel:stderr\n{PHP_FATAL}",
    )
    m.clock.now += 3  # past the pattern's grace
    m.cm.on_timer()
    m.bus(
        bus.MEMMON_TYPE,
        bus.MemoryRestart("h", "leak", "leak_0", 3, 20 << 20, 16 << 20, "leak:*", "pss"),
    )
    m.bus(bus.MEMMON_TYPE, bus.RestartsExhausted("h", "big", "big_0", 5, 50.0, 20 << 20, 16 << 20))
    m.bus(bus.MEMMON_TYPE, bus.RestartsHeld("h", "php", 32, 32, 19 << 20, 16 << 20))
    m.bus(
        bus.HEALTH_TYPE, bus.ProcessHung("h", "stuck", "stuck_0", 9, "probe", "HTTP 500", "alert")
    )
    m.bus(bus.ACTIONS_TYPE, bus.ActionPerformed("h", "web", "web_0", "restart", "admin"))
    # lost events: the reconcile finds a failed start and a FATAL that no event reported
    m.cm.on_events_lost(40, make_event("PROCESS_STATE_RUNNING", "processname:x groupname:x"))
    m.clock.now += 2
    m.cm.on_timer()
    m.reconciles[0](
        [
            {"group": "slow", "name": "slow_0", "statename": "BACKOFF", "spawnerr": "can't find"},
            {"group": "gone", "name": "gone_0", "statename": "FATAL"},
        ]
    )
    m.cm.on_timer()
    found = m.alerts()
    held = [Alert("crash", "h", "web", f"web_{i}", time=2000.0 + i, key=f"s{i}") for i in (1, 2, 1)]
    found["", "summary"] = fold(held)
    return found


#: The process whose alert stands for each kind.
MADE_BY = {
    "crash": "web:web_0",
    "crash_loop": "loop:loop_0",
    "fatal": "dead:dead_0",
    "backoff": "slow:slow_0",
    "memory_restart": "leak:leak_0",
    "restarts_exhausted": "big:big_0",
    "hung": "stuck:stuck_0",
    "restarts_held": "php:",
    "events_lost": "",
    "log_pattern": "queue:queue_0",
    "action": "web:web_0",
    "summary": "",
    "resolved": "loop:loop_0",
}


@pytest.fixture(scope="module")
def made(recorded: dict[tuple[str, str], Alert]) -> dict[str, Alert]:
    """One alert of every kind."""
    return {kind: recorded[process, kind] for kind, process in MADE_BY.items()}


class TestEveryKindSaysWhatToDoNext:
    def test_every_kind_is_made_and_checked(self, recorded):
        """The table covers every kind the alert model knows, and crashmail made each one."""
        assert set(KINDS) == set(NEXT) == set(MADE_BY)
        assert set(KINDS) == {kind for _, kind in recorded}

    @pytest.mark.parametrize("kind", [k for k, line in NEXT.items() if line])
    def test_the_rendered_text_says_what_to_do_next(self, made, kind):
        """The body a person reads holds the next step, naming the real command and process."""
        _, body = render_text(made[kind])
        assert NEXT[kind] in body

    @pytest.mark.parametrize("kind", [k for k, line in NEXT.items() if line is None])
    def test_nothing_left_to_do_offers_no_command(self, made, kind):
        """resolved (it got better) and action (a person did it) need no next step."""
        _, body = render_text(made[kind])
        assert ([], False) == (next_steps(made[kind]), "supervisorctl" in body)

    def test_a_fatal_found_by_a_reconcile_says_how_to_start_it_again(self, recorded):
        """A FATAL no event reported (found after lost events) says it too, once."""
        _, body = render_text(recorded["gone:gone_0", "fatal"])
        assert "Fix the cause, then: supervisorctl start gone:gone_0" in body
        assert 1 == body.count("supervisorctl start")

    def test_a_fatal_that_says_it_already_gets_no_second_line(self, made):
        """crashmail's own FATAL alert names `supervisorctl start`: the text says it once."""
        _, body = render_text(made["fatal"])
        assert 1 == body.count("supervisorctl start")


class TestTheLineIsSafe:
    def test_a_hostile_process_name_is_cleaned_and_quoted_for_the_shell(self):
        """Controls are replaced and a name a shell would split is quoted, on one line."""
        alert = Alert("crash", "h", "web", "w $(reboot)\x1b[31m\nx")
        [line] = next_steps(alert)
        assert "See its output: supervisorctl tail -f 'web:w $(reboot) x' stderr" == line

    def test_log_pattern_points_at_the_channel_it_matched_on(self):
        """An error written to stdout is read with `tail -f ... stdout`; anything else: stderr."""
        out = Alert("log_pattern", "h", "q", "q_0", details={"channel": "stdout"})
        odd = Alert("log_pattern", "h", "q", "q_0", details={"channel": "x; reboot"})
        assert (
            ["See its output: supervisorctl tail -f q:q_0 stdout"],
            ["See its output: supervisorctl tail -f q:q_0 stderr"],
        ) == (next_steps(out), next_steps(odd))


class TestSummaries:
    def test_a_summary_gives_one_command_per_process_in_the_order_they_failed(self):
        """Processes once each, first to fail first; resolved items need none."""
        alerts = [
            Alert("crash", "h", "g", "b", time=1.0, key="1"),
            Alert("log_pattern", "h", "g", "a", time=2.0, key="2"),
            Alert("crash", "h", "g", "b", time=3.0, key="3"),
            Alert("resolved", "h", "g", "c", time=4.0, key="4", resolves="crash_loop"),
        ]
        assert [
            "See their output:",
            "  supervisorctl tail -f g:b stderr",
            "  supervisorctl tail -f g:a stderr",
        ] == next_steps(fold(alerts))

    def test_a_large_summary_names_a_few_commands_and_counts_the_rest(self):
        """200 processes: SUMMARY_STEPS commands, then one line for the others listed below."""
        alerts = [Alert("crash", "h", "g", f"w{i}", time=i, key=str(i)) for i in range(200)]
        steps = next_steps(fold(alerts))
        assert SUMMARY_STEPS + 2 == len(steps)
        assert "  supervisorctl tail -f g:w0 stderr" == steps[1]
        assert f"  (the same for the {200 - SUMMARY_STEPS} others below)" == steps[-1]

    def test_a_summary_of_resolved_alerts_only_needs_nothing(self):
        """Every item got better: no command."""
        alerts = [
            Alert("resolved", "h", "g", n, time=i, key=n, resolves="fatal")
            for i, n in enumerate("ab")
        ]
        assert [] == next_steps(fold(alerts))
