"""The durable outbox and its courier, with real SQLite files and fake sinks."""

from __future__ import annotations

import threading

import pytest

from listeners.notify.alert import Alert
from listeners.notify.courier import Courier, backoff_delay
from listeners.notify.outbox import Outbox
from tests.fakes import FakeClock, RecordingSink, outbox_counts


def crash(name: str, key: str) -> Alert:
    return Alert(kind="crash", host="h", group=name, name=name, key=key, time=1.0)


def first(alerts: list[Alert]) -> Alert:
    return alerts[0]


class TestOutbox:
    def test_a_redelivered_incident_is_recorded_once(self, tmp_path):
        """Recording the same key twice (event redelivered after SIGKILL) keeps one row."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        assert [
            box.record(crash("a", "k1"), due=0),
            box.record(crash("a", "k1"), due=0),
        ] == [True, False]
        assert len(box.due_incidents(10)) == 1

    def test_incidents_survive_reopening(self, tmp_path):
        """What was committed is there for the next process that opens the file."""
        path = str(tmp_path / "o.sqlite")
        Outbox(path).record(crash("a", "k1"), due=5)
        assert [i.alert.key for i in Outbox(path).due_incidents(5)] == ["k1"]

    def test_not_yet_due_incidents_wait(self, tmp_path):
        """An incident due later is not handed out now; next_due says when."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        box.record(crash("a", "k1"), due=50)
        assert (box.due_incidents(10), box.next_due()) == ([], 50.0)

    def test_prune_keeps_the_newest_finished_messages_and_every_pending_one(self, tmp_path):
        """Pruning drops the oldest delivered messages beyond the bound, never a pending one."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        ids = []
        for i in range(5):
            box.record(crash("a", f"k{i}"), due=0)
            inc = box.due_incidents(1)[-1]
            ids.append(box.make_message([inc.id], inc.alert, ["s"]))
        for mid in ids[1:]:
            box.delivered(mid, "s")
        assert box.prune(keep=2) == 2
        assert [ids[0]] == [m for m, _, _ in box.pending("s", 10**12)]
        assert outbox_counts(box.path)["messages"] == 3


class TestCourier:
    def make(self, tmp_path, sinks, clock=None):
        clock = clock or FakeClock()
        box = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
        courier = Courier(box, sinks, fold=first, clock=clock, rng=lambda: 1.0, retry_base=1.0)
        return box, courier, clock

    def test_each_sink_gets_each_message_once(self, tmp_path):
        """Two sinks, two deliveries each; running the courier again sends nothing more."""
        a, b = RecordingSink("a"), RecordingSink("b")
        box, courier, _ = self.make(tmp_path, [a, b])
        box.record(crash("p", "k1"), due=0)
        box.record(crash("q", "k2"), due=0)
        assert courier.flush_once() == 2
        for _ in range(2):
            courier.deliver_once(a)
            courier.deliver_once(b)
        assert ([x.key for x in a.got], [x.key for x in b.got]) == (["k1", "k2"], ["k1", "k2"])

    def test_a_failing_sink_is_retried_after_backoff_and_the_other_is_not_held_up(self, tmp_path):
        """A down sink gets the message after its backoff; the healthy sink at once."""
        down, up = RecordingSink("down", fail=2), RecordingSink("up")
        box, courier, clock = self.make(tmp_path, [down, up])
        box.record(crash("p", "k1"), due=0)
        courier.flush_once()
        assert (courier.deliver_once(down), courier.deliver_once(up)) == (False, True)
        assert len(up.got) == 1
        assert box.next_attempt("down") == 1001.0
        clock.now = 1001.0
        assert False is courier.deliver_once(down)
        assert box.next_attempt("down") == 1003.0
        clock.now = 1003.0
        assert True is courier.deliver_once(down)
        assert [x.key for x in down.got] == ["k1"]

    def test_a_batch_of_incidents_becomes_one_folded_message(self, tmp_path):
        """Incidents sharing a batch key are given to fold() together."""
        sink = RecordingSink()
        clock = FakeClock()
        box = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
        seen: list[int] = []

        def fold(alerts):
            seen.append(len(alerts))
            return Alert(
                kind="summary", host="h", processes=tuple(a.process for a in alerts), key="s"
            )

        courier = Courier(box, [sink], fold=fold, clock=clock)
        for i in range(3):
            box.record(crash(f"p{i}", f"k{i}"), due=0, batch="batch:x")
        courier.flush_once()
        courier.deliver_once(sink)
        assert (seen, sink.got[0].processes) == ([3], ("p0:p0", "p1:p1", "p2:p2"))

    def test_a_delivery_is_given_up_after_retry_for(self, tmp_path):
        """Past retry_for, a failing delivery is marked expired instead of retried forever."""
        down = RecordingSink("down", fail=10)
        clock = FakeClock()
        box = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
        courier = Courier(box, [down], fold=first, clock=clock, retry_for=60)
        box.record(crash("p", "k1"), due=0)
        courier.flush_once()
        clock.now += 120
        courier.deliver_once(down)
        assert outbox_counts(box.path)["deliveries_expired"] == 1

    def test_threads_deliver_without_being_asked_twice(self, tmp_path):
        """Started courier threads deliver a recorded incident after one wake()."""
        got = threading.Event()

        class Signal(RecordingSink):
            def send(self, alert):
                super().send(alert)
                got.set()

        sink = Signal()
        box = Outbox(str(tmp_path / "o.sqlite"))
        courier = Courier(box, [sink], fold=first)
        courier.start()
        try:
            box.record(crash("p", "k1"), due=0)
            courier.wake()
            assert got.wait(10)
        finally:
            courier.stop()
        assert [a.key for a in sink.got] == ["k1"]


class TestBackoff:
    @pytest.mark.parametrize(("attempts", "expected"), [(0, 1.0), (1, 2.0), (3, 8.0), (20, 60.0)])
    def test_doubles_up_to_the_cap(self, attempts, expected):
        """Without jitter (rng=1) the delay doubles per attempt and stops at the cap."""
        assert expected == backoff_delay(attempts, 1.0, 60.0, rng=lambda: 1.0)

    def test_jitter_stays_within_half_and_full(self):
        """With rng=0 the delay is half the ceiling: never zero, never above it."""
        assert backoff_delay(3, 1.0, 60.0, rng=lambda: 0.0) == 4.0
