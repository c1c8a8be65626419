"""The outbox when things go wrong: a locked or full database, damaged rows, missing rows,
slow sinks, receivers that ask for quiet or refuse for good. Real SQLite files, fake sinks."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from listeners.core import bus
from listeners.notify.alert import Alert
from listeners.notify.courier import Courier
from listeners.notify.delivery import DeliveryHealthAnnouncer
from listeners.notify.outbox import Outbox, OutboxHealth, health_announcer
from listeners.notify.sinks import (
    RETRY_AFTER_CAP,
    Sink,
    SinkError,
    http_status_error,
    parse_retry_after,
)
from listeners.notify.smtp import SmtpSink
from listeners.notify.webhook import WebhookSink
from tests.fakes import FakeClock, RecordingSink
from tests.test_cutoff import Trickler


def crash(name: str, key: str) -> Alert:
    return Alert(kind="crash", host="h", group=name, name=name, key=key, time=1.0)


def first(alerts: list[Alert]) -> Alert:
    return alerts[0]


def delivery(path: str, column: str) -> list[object]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute(f"SELECT {column} FROM deliveries ORDER BY message_id")]  # noqa: S608


class Locked:
    """Another process holding the outbox's write lock (an sqlite3 shell in BEGIN EXCLUSIVE)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


class TestCommitFailures:
    def test_a_locked_outbox_keeps_the_incident_in_memory_and_writes_it_once_unlocked(
        self, tmp_path
    ):
        """record() on a locked file does not raise; the spool is written after the lock goes."""
        path = str(tmp_path / "o.sqlite")
        told: list[OutboxHealth] = []
        box = Outbox(path, on_health=told.append, record_timeout=0.05)
        lock = Locked(path)
        try:
            assert box.record(crash("a", "k1"), due=0) is True
            assert box.record(crash("b", "k2"), due=0) is True
            assert (box.spooled, box.drain_spool()) == (2, 0)
        finally:
            lock.release()
        assert box.drain_spool() == 2
        assert [i.alert.key for i in box.due_incidents(10)] == ["k1", "k2"]
        # failing at the first, the figures again when the retry found two, recovered at last
        assert [(h.failing, h.spooled) for h in told] == [(True, 1), (True, 2), (False, 0)]

    def test_a_long_outage_announces_when_the_figures_move_and_not_on_every_retry(self, tmp_path):
        """Retries that find the same spool say nothing new; a new loss is announced."""
        path = str(tmp_path / "o.sqlite")
        told: list[OutboxHealth] = []
        box = Outbox(path, on_health=told.append, record_timeout=0.05, spool_limit=2)
        lock = Locked(path)
        try:
            box.record(crash("a", "k1"), due=0)
            for _ in range(3):
                box.drain_spool()  # the courier's retries: nothing moved
            box.record(crash("a", "k2"), due=0)
            box.record(crash("a", "k3"), due=0)  # the spool holds two: this one is lost
            box.drain_spool()
            box.drain_spool()
        finally:
            lock.release()
        box.drain_spool()
        assert [(h.failing, h.spooled, h.dropped) for h in told] == [
            (True, 1, 0),
            (True, 2, 1),
            (False, 0, 0),
        ]

    def test_a_redelivered_event_is_not_spooled_twice(self, tmp_path):
        """While spooling, the same key recorded again is a duplicate (False), not a second row."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path, record_timeout=0.05)
        lock = Locked(path)
        try:
            assert [box.record(crash("a", "k1"), due=0) for _ in range(2)] == [True, False]
        finally:
            lock.release()
        assert box.spooled == 1

    def test_a_full_database_spools_and_recovers(self, tmp_path):
        """SQLITE_FULL (max_page_count reached stands in for a full disk) spools the incident."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        for i in range(3):
            box.record(crash("a", f"old{i}"), due=0)
        box._record_db().execute("PRAGMA max_page_count=1")  # the loop connection is full
        box._db().execute("PRAGMA max_page_count=1")
        big = Alert(kind="crash", host="h", group="a", name="a", key="k1", message="x" * 20000)
        assert box.record(big, due=0) is True
        assert (box.spooled, box.failing is not None and "full" in box.failing) == (1, True)
        box._db().execute("PRAGMA max_page_count=1073741823")
        box._record_db().execute("PRAGMA max_page_count=1073741823")
        assert (box.drain_spool(), box.spooled, box.failing) == (1, 0, None)

    def test_past_the_spool_limit_the_loss_is_reported_as_an_events_lost_alert(self, tmp_path):
        """A full spool drops incidents, counts them, and says so in an alert once writable."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path, record_timeout=0.05, spool_limit=2)
        lock = Locked(path)
        try:
            for i in range(5):
                box.record(crash("a", f"k{i}"), due=0)
        finally:
            lock.release()
        box.drain_spool()
        alerts = [i.alert for i in box.due_incidents(10**12)]
        assert [a.key for a in alerts[:2]] == ["k0", "k1"]
        assert (alerts[2].kind, alerts[2].count) == ("events_lost", 3)

    def test_trouble_is_published_on_the_bus_through_the_given_worker(self, tmp_path):
        """A locked outbox makes one listeners.crashmail outbox_trouble message, via submit."""
        sent: list[tuple[str, str]] = []
        queued: list[object] = []

        def submit(fn):
            queued.append(fn)
            fn()

        path = str(tmp_path / "o.sqlite")
        announce = health_announcer("h", lambda t, d: sent.append((t, d)), submit)
        box = Outbox(path, on_health=announce, record_timeout=0.05)
        lock = Locked(path)
        try:
            box.record(crash("a", "k1"), due=0)
        finally:
            lock.release()
        msg = bus.decode(sent[0][1])
        assert (len(queued), sent[0][0], msg.failing, msg.spooled) == (
            1,
            bus.CRASHMAIL_TYPE,
            True,
            1,
        )

    def test_the_trouble_message_round_trips_on_the_bus(self):
        """OutboxTrouble is part of the one bus schema: encode then decode gives it back."""
        msg = bus.OutboxTrouble("h", True, "database or disk is full", 3, 1)
        assert bus.decode(bus.encode(msg)) == msg


class TestDamagedRows:
    def test_one_damaged_incident_is_quarantined_and_the_others_delivered(self, tmp_path):
        """A row whose JSON is broken is moved aside; the three valid ones reach the sink."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        for i in range(4):
            box.record(crash(f"p{i}", f"k{i}"), due=0)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE incidents SET body = '{broken' WHERE key = 'k1'")
        sink = RecordingSink()
        courier = Courier(box, [sink], fold=first)
        courier.flush_once()
        courier.deliver_once(sink)
        with sqlite3.connect(path) as db:
            quarantined = [r[0] for r in db.execute("SELECT key FROM quarantine")]
        assert ([a.key for a in sink.got], quarantined) == (["k0", "k2", "k3"], ["k1"])

    def test_a_damaged_message_is_quarantined_and_the_next_one_delivered(self, tmp_path):
        """A message with an unknown kind does not stop the delivery of the next message."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        for i in range(2):
            box.record(crash(f"p{i}", f"k{i}"), due=0)
        sink = RecordingSink()
        courier = Courier(box, [sink], fold=first)
        courier.flush_once()
        with sqlite3.connect(path) as db:
            db.execute(
                "UPDATE messages SET body = replace(body, '\"crash\"', '\"?\"') WHERE key = 'k0'"
            )
        courier.deliver_once(sink)
        assert ([a.key for a in sink.got], delivery(path, "state")) == (
            ["k1"],
            ["quarantined", "delivered"],
        )


class TestDeliveryHealthRead:
    def test_an_unreadable_outbox_skips_the_health_tick_instead_of_raising(self, tmp_path):
        """The event loop's look at the counts fails softly: None, logged, nothing published."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        box.record(crash("p", "k1"), due=0)
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE sink_failures")
        sent: list[str] = []
        announcer = DeliveryHealthAnnouncer(
            box, ["rec"], host="h", publish=sent.append, clock=FakeClock()
        )
        assert (box.delivery_health(["rec"]), announcer.tick(), sent) == (None, False, [])


class TestMissingMessage:
    def test_a_delivery_without_its_message_is_not_due_and_is_marked_orphaned(self, tmp_path):
        """next_attempt ignores a delivery whose message row is gone (no busy loop)."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        box.record(crash("p", "k1"), due=0)
        sink = RecordingSink()
        courier = Courier(box, [sink], fold=first)
        courier.flush_once()
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM messages")
        assert box.next_attempt("rec") is None
        assert courier.deliver_once(sink) is True
        assert delivery(path, "state") == ["orphaned"]


def two_attempts(path: str, sink: Sink, deadline: float) -> list[bool]:
    """One crash recorded, then two delivery attempts 10 s apart (fake time)."""
    clock = FakeClock()
    box = Outbox(path, clock=clock)
    courier = Courier(box, [sink], fold=first, deadline=deadline, clock=clock, rng=lambda: 1.0)
    box.record(crash("p", "k1"), due=0)
    courier.flush_once()
    done = [courier.deliver_once(sink)]
    clock.now += 10
    return [*done, courier.deliver_once(sink)]


class TestDeadline:
    def test_a_send_that_hangs_past_its_deadline_is_a_counted_failed_attempt(self, tmp_path):
        """A sink stuck in send() fails the attempt at the deadline; one hung call at most."""
        release = threading.Event()
        calls: list[str] = []

        class Hanging(RecordingSink):
            def send(self, alert: Alert) -> None:
                calls.append(alert.key)
                release.wait(30)

        path = str(tmp_path / "o.sqlite")
        try:
            assert [False, False] == two_attempts(path, Hanging("slow"), deadline=0.2)
        finally:
            release.set()
        errors = delivery(path, "last_error")
        assert (calls, delivery(path, "attempts"), "still hanging" in str(errors[0])) == (
            ["k1"],
            [2],
            True,
        )

    @pytest.mark.parametrize("kind", ["webhook", "smtp"])
    def test_a_receiver_that_trickles_for_good_holds_up_no_later_attempt(self, tmp_path, kind):
        """The cut-off attempt ends: the next one reaches the receiver, none is 'still hanging'."""
        server = Trickler(first=b"HTTP/1.1 200 OK\r\n" if kind == "webhook" else b"220 ")
        sink: WebhookSink | SmtpSink
        if kind == "webhook":
            sink = WebhookSink(f"http://127.0.0.1:{server.port}/hook", timeout=1.0, name="t")
        else:
            sink = SmtpSink("127.0.0.1", server.port, "a@b.invalid", ["c@d.invalid"], name="t")
        path = str(tmp_path / "o.sqlite")
        try:
            assert [False, False] == two_attempts(path, sink, deadline=0.5)
            assert server.closed_by_peer.wait(5)
        finally:
            server.close()
        errors = [str(e) for e in delivery(path, "last_error")]
        assert (delivery(path, "attempts"), server.connections) == ([2], 2)
        assert ("deadline" in errors[0], "still hanging" in errors[0]) == (True, False)


class TestRetryPolicy:
    def test_retry_after_seconds_is_honoured_above_the_backoff(self, tmp_path):
        """A 429 asking for 120 s is retried no sooner, although retry_max is 5 s."""
        clock = FakeClock()
        box = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
        sink = RecordingSink(
            error=http_status_error("webhook w", 429, "Too Many", {"Retry-After": "120"})
        )
        courier = Courier(box, [sink], fold=first, clock=clock, retry_max=5, rng=lambda: 1.0)
        box.record(crash("p", "k1"), due=0)
        courier.flush_once()
        courier.deliver_once(sink)
        assert box.next_attempt("rec") == 1120.0

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
    def test_a_permanent_4xx_gives_up_at_once_and_says_why(self, tmp_path, status):
        """4xx other than 408/429: the delivery is failed (not retried) with a reason."""
        clock = FakeClock()
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path, clock=clock)
        sink = RecordingSink(error=http_status_error("webhook w", status, "No", {}))
        courier = Courier(box, [sink], fold=first, clock=clock)
        box.record(crash("p", "k1"), due=0)
        courier.flush_once()
        courier.deliver_once(sink)
        assert (delivery(path, "state"), box.next_attempt("rec")) == (["failed"], None)
        assert "permanent" in str(delivery(path, "last_error")[0])

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
    def test_transient_statuses_are_retried(self, status):
        """408, 429 and 5xx are not permanent."""
        assert http_status_error("w", status, "", {}).permanent is False

    def test_retry_after_as_an_http_date(self):
        """An HTTP-date Retry-After is the seconds from now until then."""
        assert parse_retry_after("Thu, 01 Jan 1970 00:16:40 GMT", now=lambda: 900.0) == 100.0

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("999999", RETRY_AFTER_CAP), ("soon", None), ("", None), ("0", 0.0)],
    )
    def test_retry_after_is_capped_and_junk_ignored(self, value, expected):
        """A huge Retry-After waits at most an hour; an unreadable one is ignored."""
        assert parse_retry_after(value) == expected

    def test_an_error_with_a_url_does_not_keep_its_token(self, tmp_path):
        """A sink error quoting its URL is stored and logged without the path or credentials."""
        path = str(tmp_path / "o.sqlite")
        box = Outbox(path)
        sink = RecordingSink(
            error=SinkError("POST https://u:pw@hooks.example.com/services/T0/B0/SECRET failed")
        )
        courier = Courier(box, [sink], fold=first)
        box.record(crash("p", "k1"), due=0)
        courier.flush_once()
        courier.deliver_once(sink)
        stored = str(delivery(path, "last_error")[0])
        assert ("SECRET" in stored, "pw" in stored, "hooks.example.com" in stored) == (
            False,
            False,
            True,
        )


class CommitFails:
    """A connection whose COMMIT fails the way a full disk makes it fail: SQLite has already
    rolled the transaction back, so a ROLLBACK now would raise an error of its own."""

    def __init__(self) -> None:
        self.in_transaction = False

    def execute(self, sql: str) -> None:
        if sql == "BEGIN IMMEDIATE":
            self.in_transaction = True
        elif sql == "COMMIT":
            self.in_transaction = False
            raise sqlite3.OperationalError("database or disk is full")
        elif sql == "ROLLBACK" and not self.in_transaction:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")


class TestFailedCommit:
    def test_the_commits_own_error_is_raised_not_the_rollbacks(self):
        """A full disk said "cannot rollback - no transaction is active" 88 times in 10 s,
        hiding the cause; the caller now gets "database or disk is full"."""
        from listeners.notify.outbox import _immediate

        db = CommitFails()
        with (
            pytest.raises(sqlite3.OperationalError, match="database or disk is full"),
            _immediate(db),  # type: ignore[arg-type]
        ):
            pass

    def test_a_failing_outbox_is_logged_in_one_line_per_interval_not_a_traceback(
        self, tmp_path, capsys
    ):
        """The courier's threads meet the outbox's trouble once a second: one warning line
        with the error per 10 s, no traceback."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        calls = 0

        def broken() -> bool:
            nonlocal calls
            calls += 1
            raise sqlite3.OperationalError("database or disk is full")

        box.drain_spool = broken  # type: ignore[method-assign]
        courier = Courier(box, [RecordingSink()], fold=first)
        courier.start()
        try:
            for _ in range(300):
                if calls >= 3:
                    break
                threading.Event().wait(0.05)
        finally:
            courier.stop()
        err = capsys.readouterr().err
        failed = [ln for ln in err.splitlines() if '"outbox.flush_failed"' in ln]
        assert calls >= 3
        assert 1 == len(failed), err
        assert "database or disk is full" in failed[0]
        assert "Traceback" not in err
        (final,) = [ln for ln in err.splitlines() if '"outbox.final_flush_failed"' in ln]
        assert '"lost": 0' in final
