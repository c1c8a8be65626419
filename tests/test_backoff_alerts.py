"""crashmail's crash alerts say when health's backoff starts the process next (issue 15 #3)."""

from __future__ import annotations

import json

from listeners.core import bus
from listeners.crashmail import CrashMail
from listeners.notify.alert import Alert, iso_time, render_text
from listeners.notify.backoffs import STALE, WAIT, BackoffMemory
from listeners.notify.courier import Courier
from listeners.notify.flood import fold
from listeners.notify.sinks import FileSink
from tests.fakes import make_event
from tests.test_crashmail import Harness


def hold(h: Harness, delay: float, failures: int = 1, name: str = "w", group: str = "g") -> None:
    """health's Backoff for ``group:name``, as crashmail gets it over the bus."""
    msg = bus.Backoff(
        host="h",
        group=group,
        name=name,
        failures=failures,
        delay_seconds=delay,
        next_start=h.clock.now + delay,
    )
    h.serial += 1
    h.cm.handle(
        make_event("REMOTE_COMMUNICATION", f"type:{bus.HEALTH_TYPE}\n{bus.encode(msg)}", h.serial)
    )


def sent(h: Harness, tmp_path, at: float | None = None) -> list[dict]:
    """What the file sink writes for the incidents due at ``at`` (composed as the courier does)."""
    path = tmp_path / "alerts.jsonl"
    courier = Courier(
        h.outbox,
        [FileSink(str(path))],
        fold=fold,
        enrich=h.cm.backoffs.attach,
        clock=lambda: h.clock.now if at is None else at,
    )
    courier.flush_once()
    courier.deliver_once(courier.sinks[0])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestNoFlood:
    def test_a_backoff_message_is_no_alert_of_its_own(self, tmp_path):
        """Ten Backoff messages record nothing: the hold is said in the process's alerts."""
        h = Harness(tmp_path)
        for n in range(1, 11):
            hold(h, 10.0 * n, failures=n)
        assert [] == h.kinds(due=10**12)
        assert 1 == len(h.cm.backoffs)

    def test_a_process_crashmail_does_not_watch_is_not_remembered(self, tmp_path):
        """A Backoff of an --exclude'd process is not kept."""
        h = Harness(tmp_path, exclude=("skip*",))
        hold(h, 10.0, name="skipme", group="skipme")
        assert 0 == len(h.cm.backoffs)


class TestNextStartInCrashAlerts:
    def test_a_hold_heard_just_after_the_crash_is_in_the_crash_alert(self, tmp_path):
        """Crash, then health's Backoff: the sent crash alert says 'next start in 40 s'."""
        h = Harness(tmp_path)
        h.send("EXITED", expected=0, pid=5)
        h.clock.now += 0.2
        hold(h, 39.8, failures=3)
        (record,) = sent(h, tmp_path)
        assert "crash" == record["kind"]
        assert "next start in 40 s" in record["text"]
        assert "after 3 failures in a row" in record["message"]
        assert {
            "next_start": iso_time(h.clock.now + 39.8),
            "backoff_seconds": 39.8,
            "backoff_failures": 3,
        }.items() <= record["details"].items()

    def test_a_hold_heard_before_the_crash_event_is_in_it_too(self, tmp_path):
        """Backoff first (another listener was quicker), crash event second: still said."""
        h = Harness(tmp_path)
        hold(h, 10.0)
        h.send("EXITED", expected=0, pid=5)
        (record,) = sent(h, tmp_path)
        assert "supervisor-health holds it: next start in 10 s" in record["message"]
        assert "failures in a row" not in record["message"]

    def test_the_crash_loop_alert_says_the_next_start(self, tmp_path):
        """The third crash opens the loop; its alert carries the hold health set for it."""
        h = Harness(tmp_path)
        for n in range(1, 4):
            h.send("EXITED", expected=0, pid=5)
            hold(h, 5.0 * n, failures=n)
            h.clock.now += 5.0 * n + 1
            h.send("STARTING")
            h.send("RUNNING", pid=6)
            h.clock.now += 1
        records = sent(h, tmp_path, at=10**10)
        (loop,) = [r for r in records if r["kind"] == "crash_loop"]
        assert "next start in 15 s" in loop["text"]
        assert 3 == loop["details"]["backoff_failures"]
        _, body = render_text(Alert.from_json(json.dumps(_alert_fields(loop))))
        assert "after 3 failures in a row: next start in 15 s" in body

    def test_an_old_hold_is_not_said_of_a_new_crash(self, tmp_path):
        """A hold whose next start has passed belongs to an earlier crash: not in a new one."""
        h = Harness(tmp_path)
        hold(h, 10.0)
        h.clock.now += 30
        h.send("EXITED", expected=0, pid=5)
        h.clock.now += WAIT
        (record,) = sent(h, tmp_path)
        assert "next start" not in record["message"]
        assert "next_start" not in record["details"]


class TestWaitForTheHold:
    def test_a_crash_of_a_held_process_waits_for_healths_message(self, tmp_path):
        """health held it before: its next crash waits up to WAIT s, then goes with the hold."""
        h = Harness(tmp_path, coalesce=1.0)
        hold(h, 5.0)
        h.clock.now += 10  # started again after the hold, crashed again
        h.send("EXITED", expected=0, pid=5)
        assert [] == h.kinds()
        h.clock.now += 0.1
        hold(h, 10.0, failures=2)
        assert [] == h.kinds()
        h.clock.now += WAIT
        (record,) = sent(h, tmp_path)
        assert "next start in 10 s" in record["message"]

    def test_a_process_health_never_held_alerts_at_once(self, tmp_path):
        """No hold heard of the process: its crash is due at once, as before."""
        h = Harness(tmp_path)
        h.send("EXITED", expected=0, pid=5)
        assert [("crash", "w")] == h.kinds()

    def test_a_hold_already_heard_does_not_wait(self, tmp_path):
        """The Backoff arrived first: the crash is due at once."""
        h = Harness(tmp_path)
        hold(h, 10.0)
        h.send("EXITED", expected=0, pid=5)
        assert [("crash", "w")] == h.kinds()


class TestShared:
    def test_crashmail_uses_the_memory_the_courier_reads_even_while_empty(self, tmp_path):
        """main() hands one memory to the listener and the courier: an empty one is kept."""
        h = Harness(tmp_path)
        memory = BackoffMemory(stable=60.0)
        cm = CrashMail(h.cm.config, h.outbox, clock=h.clock, backoffs=memory)
        assert cm.backoffs is memory


class TestBounded:
    def test_a_stable_run_forgets_the_hold(self, tmp_path):
        """RUNNING for the loop window drops the hold; a shorter run does not."""
        h = Harness(tmp_path)
        hold(h, 1.0)
        h.clock.now += 1
        h.send("RUNNING", pid=6)
        h.clock.now += 59
        h.cm.on_timer()
        assert 1 == len(h.cm.backoffs)
        h.clock.now += 1
        h.cm.on_timer()
        assert 0 == len(h.cm.backoffs)

    def test_a_crash_restarts_the_stable_clock(self, tmp_path):
        """RUNNING, a crash, RUNNING again: the window counts from the last RUNNING."""
        memory = BackoffMemory(stable=60.0)
        memory.heard(bus.Backoff("h", "g", "w", 1, 1.0, next_start=1001.0))
        memory.observe("g:w", "RUNNING", 1001.0)
        memory.observe("g:w", "EXITED", 1050.0)
        memory.observe("g:w", "RUNNING", 1055.0)
        memory.observe("g:w", "RUNNING", 1056.0)
        assert (0, 1) == (memory.prune(1114.0), memory.prune(1115.0))

    def test_a_stale_hold_is_forgotten(self, tmp_path):
        """No newer hold for STALE s past its next start: forgotten, even never seen running."""
        memory = BackoffMemory(stable=60.0)
        memory.heard(bus.Backoff("h", "g", "w", 1, 10.0, next_start=1010.0))
        assert 0 == memory.prune(1010.0 + STALE - 1)
        assert 1 == memory.prune(1010.0 + STALE)
        assert 0 == len(memory)

    def test_at_most_limit_holds_the_oldest_heard_goes(self):
        """A flood of processes keeps the newest ``limit`` holds."""
        memory = BackoffMemory(stable=60.0, limit=3)
        for i in range(5):
            memory.heard(bus.Backoff("h", "g", f"w{i}", 1, 10.0, next_start=2000.0))
        assert 3 == len(memory)
        assert memory.current("g:w0", 1000.0) is None
        assert memory.current("g:w4", 1000.0) is not None

    def test_a_removed_group_takes_its_holds(self):
        """forget_group drops that group's holds only."""
        memory = BackoffMemory(stable=60.0)
        memory.heard(bus.Backoff("h", "a", "w", 1, 10.0, next_start=2000.0))
        memory.heard(bus.Backoff("h", "b", "w", 1, 10.0, next_start=2000.0))
        assert (1, 1) == (memory.forget_group("a"), len(memory))


def _alert_fields(record: dict) -> dict:
    """The Alert fields of a file sink record (it adds time_iso and text)."""
    return {k: v for k, v in record.items() if k not in ("time_iso", "text")}


def test_a_hold_by_health_during_an_incident_is_not_stopped_on_purpose(tmp_path):
    """health stops the crash-looping worker between tries (STOPPED): that is the loop, not
    an operator's stop; no "stopped on purpose" note, and the reminders go on."""
    from listeners.notify.incident import STOP_NOTE_HOLD
    from tests.test_crashmail_incidents import alerts, loop

    h = Harness(tmp_path, repeat=600.0)
    loop(h)
    hold(h, 40.0)
    h.send("STOPPED", pid=6)
    h.clock.now += STOP_NOTE_HOLD + 1
    h.cm.on_timer()
    assert [] == [a for a in alerts(h) if a.details.get("note")]
    h.clock.now += 600
    h.cm.on_timer()
    assert 1 == len([a for a in alerts(h) if a.details.get("reminder")])
    assert [] == [a for a in alerts(h) if a.kind == "resolved"]  # held is not stable
