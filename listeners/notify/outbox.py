"""The durable outbox: alerts survive a sink outage, SIGKILL and a supervisord restart.

Three tables in one SQLite file (WAL):

- ``incidents``: what the listener saw, committed before the event is acknowledged. Each has a
  ``due`` time and a ``batch``: incidents of one batch become one message (a summary when
  there are several), which is how flood control folds repeats without keeping them in memory.
- ``messages``: what the sinks receive, made from due incidents by the courier.
- ``deliveries``: one row per message and sink; ``delivered`` once the sink took it. A sink
  therefore receives each message once: a retry only happens for a row still ``pending``.

The connection is per thread (sqlite3 objects must not cross threads); WAL lets the event loop
write incidents while the courier reads and delivers.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from listeners.core.log import get_logger
from listeners.notify.alert import Alert
from listeners.notify.sinks import Sink, SinkError

__all__ = ["Courier", "Incident", "Outbox", "OutboxOwnerError", "backoff_delay"]

log = get_logger("listeners.notify.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    batch TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    due REAL NOT NULL,
    message_id INTEGER
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (message_id, due);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id INTEGER NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (message_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, state, next_attempt);
"""

# Added later, so an outbox made by an older crashmail gains them on open (IF NOT EXISTS):
# ``loops`` keeps open crash-loop incidents (listeners.notify.incident), ``owner`` the identity
# of the supervisord whose crashmail made the file, ``sink_failures`` a failed-attempt count per
# sink that pruning never lowers (a trigger counts every failed attempt).
_SCHEMA_INCIDENTS = """
CREATE TABLE IF NOT EXISTS loops (
    process TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS owner (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_failures (
    sink TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS deliveries_count_failures AFTER UPDATE OF attempts ON deliveries
WHEN NEW.attempts > OLD.attempts AND NEW.state != 'delivered'
BEGIN
    INSERT INTO sink_failures (sink, failures) VALUES (NEW.sink, 1)
    ON CONFLICT (sink) DO UPDATE SET failures = failures + 1;
END;
"""


@dataclass(frozen=True)
class Incident:
    """One recorded alert that is not a message yet."""

    id: int
    batch: str
    alert: Alert


def backoff_delay(
    attempts: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Jittered exponential backoff: between half and all of ``min(cap, base * 2**attempts)``."""
    ceiling = min(cap, base * 2.0 ** min(attempts, 30))
    return float(ceiling * (0.5 + 0.5 * rng()))


class OutboxOwnerError(Exception):
    """The outbox was made by the crashmail of another supervisord."""


class Outbox:
    """SQLite storage of incidents, messages and per-sink deliveries."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        db = self._db()
        db.executescript(_SCHEMA)
        db.executescript(_SCHEMA_INCIDENTS)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the event is acknowledged (power loss included).
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ---------------------------------------------------------------- incidents

    def record(self, alert: Alert, *, due: float, batch: str | None = None) -> bool:
        """Commit one incident; False when its key was recorded before (a redelivery)."""
        cur = self._db().execute(
            "INSERT OR IGNORE INTO incidents (key, batch, body, created, due)"
            " VALUES (?, ?, ?, ?, ?)",
            (alert.key, batch or alert.key, alert.to_json(), self.clock(), due),
        )
        return cur.rowcount == 1

    def due_incidents(self, now: float) -> list[Incident]:
        rows = self._db().execute(
            "SELECT id, batch, body FROM incidents WHERE message_id IS NULL AND due <= ?"
            " ORDER BY id",
            (now,),
        )
        return [Incident(i, b, Alert.from_json(body)) for i, b, body in rows]

    def next_due(self) -> float | None:
        row = (
            self._db().execute("SELECT MIN(due) FROM incidents WHERE message_id IS NULL").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def open_batches(self) -> dict[str, float]:
        """Deferred batches not flushed yet, by batch key -> due time (to resume after restart)."""
        rows = self._db().execute(
            "SELECT batch, MIN(due) FROM incidents WHERE message_id IS NULL GROUP BY batch"
        )
        return {str(b): float(d) for b, d in rows}

    # ---------------------------------------------------------------- messages

    def make_message(self, incident_ids: Sequence[int], alert: Alert, sinks: Iterable[str]) -> int:
        """Turn incidents into one message with a pending delivery per sink, atomically."""
        db = self._db()
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR IGNORE INTO messages (key, body, created) VALUES (?, ?, ?)",
                (alert.key, alert.to_json(), now),
            )
            (message_id,) = db.execute(
                "SELECT id FROM messages WHERE key = ?", (alert.key,)
            ).fetchone()
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (message_id, sink, next_attempt)"
                " VALUES (?, ?, ?)",
                [(message_id, sink, now) for sink in sinks],
            )
            db.executemany(
                "UPDATE incidents SET message_id = ? WHERE id = ?",
                [(message_id, i) for i in incident_ids],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(message_id)

    def pending(self, sink: str, now: float, limit: int = 50) -> list[tuple[int, Alert, int]]:
        """(message id, alert, attempts so far) due for ``sink``, oldest first."""
        rows = self._db().execute(
            "SELECT d.message_id, m.body, d.attempts FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            " WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt <= ?"
            " ORDER BY d.message_id LIMIT ?",
            (sink, now, limit),
        )
        return [(int(i), Alert.from_json(body), int(a)) for i, body, a in rows]

    def next_attempt(self, sink: str) -> float | None:
        row = (
            self._db()
            .execute(
                "SELECT MIN(next_attempt) FROM deliveries WHERE sink = ? AND state = 'pending'",
                (sink,),
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def delivered(self, message_id: int, sink: str) -> None:
        self._db().execute(
            "UPDATE deliveries SET state = 'delivered', delivered_at = ?, attempts = attempts + 1"
            " WHERE message_id = ? AND sink = ?",
            (self.clock(), message_id, sink),
        )

    def failed(self, message_id: int, sink: str, error: str, retry_at: float | None) -> None:
        """Record a failed attempt; ``retry_at`` None gives the delivery up (state expired)."""
        self._db().execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?,"
            " next_attempt = COALESCE(?, next_attempt),"
            " state = CASE WHEN ? IS NULL THEN 'expired' ELSE state END"
            " WHERE message_id = ? AND sink = ?",
            (error[:500], retry_at, retry_at, message_id, sink),
        )

    def created(self, message_id: int) -> float:
        row = (
            self._db()
            .execute("SELECT created FROM messages WHERE id = ?", (message_id,))
            .fetchone()
        )
        return float(row[0]) if row else self.clock()

    # ---------------------------------------------------------------- upkeep

    def prune(self, keep: int) -> int:
        """Delete the oldest messages beyond ``keep`` whose deliveries are all finished."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            done = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM messages WHERE NOT EXISTS (SELECT 1 FROM deliveries d"
                    " WHERE d.message_id = messages.id AND d.state = 'pending')"
                    " ORDER BY id DESC LIMIT -1 OFFSET ?",
                    (keep,),
                )
            ]
            for chunk in range(0, len(done), 500):
                ids = done[chunk : chunk + 500]
                marks = ",".join("?" * len(ids))
                db.execute(f"DELETE FROM deliveries WHERE message_id IN ({marks})", ids)  # noqa: S608 - only ? marks
                db.execute(f"DELETE FROM incidents WHERE message_id IN ({marks})", ids)  # noqa: S608
                db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)  # noqa: S608
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(done)

    def counts(self) -> dict[str, int]:
        db = self._db()
        out = {
            "incidents_open": db.execute(
                "SELECT COUNT(*) FROM incidents WHERE message_id IS NULL"
            ).fetchone()[0],
            "messages": db.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
        }
        for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[f"deliveries_{state}"] = n
        return out

    # ---------------------------------------------------------------- incidents, owner, health

    def claim(self, identity: str) -> None:
        """Mark ``outbox`` as this supervisord's, or raise when another one's mark is there."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT identity FROM owner WHERE one = 1").fetchone()
            if row is None:
                db.execute("INSERT INTO owner (one, identity) VALUES (1, ?)", (identity,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if row is not None and row[0] != identity:
            raise OutboxOwnerError(str(row[0]))

    def open_loops(self) -> dict[str, str]:
        """Open crash-loop incidents: process -> JSON state."""
        return {str(p): str(b) for p, b in self._db().execute("SELECT process, body FROM loops")}

    def save_loop(self, process: str, body: str) -> None:
        self._db().execute(
            "INSERT INTO loops (process, body) VALUES (?, ?)"
            " ON CONFLICT (process) DO UPDATE SET body = excluded.body",
            (process, body),
        )

    def close_loop(self, process: str) -> None:
        self._db().execute("DELETE FROM loops WHERE process = ?", (process,))

    def unsent(self, key: str) -> list[Alert]:
        """The incident recorded under ``key`` while no message has been made of it yet."""
        rows = self._db().execute(
            "SELECT body FROM incidents WHERE key = ? AND message_id IS NULL", (key,)
        )
        return [Alert.from_json(b) for (b,) in rows]

    def update_unsent(self, key: str, alert: Alert) -> bool:
        """Replace the body of an incident no message has been made of; False when too late."""
        cur = self._db().execute(
            "UPDATE incidents SET body = ? WHERE key = ? AND message_id IS NULL",
            (alert.to_json(), key),
        )
        return cur.rowcount == 1

    def drop_unsent(self, process: str, kinds: Sequence[str]) -> int:
        """Forget incidents of ``process`` waiting in a flood-control batch (a crash loop's
        alert covers them); those due at once are left to go."""
        db = self._db()
        ids = [
            i
            for i, body in db.execute(
                "SELECT id, body FROM incidents WHERE message_id IS NULL AND batch != key"
            )
            if (a := Alert.from_json(body)).process == process and a.kind in kinds
        ]
        db.executemany("DELETE FROM incidents WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    def delivery_health(self, sinks: Iterable[str]) -> dict[str, tuple[int, int]]:
        """sink -> (deliveries pending now, failed attempts ever) for each of ``sinks``."""
        db = self._db()
        out = dict.fromkeys(sinks, (0, 0))
        for sink, n in db.execute(
            "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
        ):
            if sink in out:
                out[sink] = (int(n), out[sink][1])
        for sink, n in db.execute("SELECT sink, failures FROM sink_failures"):
            if sink in out:
                out[sink] = (out[sink][0], int(n))
        return out


class Courier:
    """Threads that turn due incidents into messages and deliver them, one thread per sink.

    ``fold(incidents)`` makes one alert from a batch; ``enrich(alert)`` adds what needs RPC (exit
    status, stderr tail). Both run on the courier's thread, never on the event loop. A sink that
    hangs holds up only its own thread.
    """

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[Sink],
        *,
        fold: Callable[[list[Alert]], Alert],
        enrich: Callable[[Alert], Alert] = lambda a: a,
        retry_base: float = 1.0,
        retry_max: float = 300.0,
        retry_for: float = 86400.0,
        keep: int = 10000,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self.sinks = list(sinks)
        self.fold = fold
        self.enrich = enrich
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.retry_for = retry_for
        self.keep = keep
        self.clock = clock
        self.rng = rng
        self._stop = threading.Event()
        self._flush_wake = threading.Event()
        self._sink_wake = {s.name: threading.Event() for s in self.sinks}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._flusher, name="outbox-flush", daemon=True)]
        self._threads += [
            threading.Thread(target=self._deliverer, args=(s,), name=f"sink-{s.name}", daemon=True)
            for s in self.sinks
        ]
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        """New incidents were committed: look at them now."""
        self._flush_wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._flush_wake.set()
        for ev in self._sink_wake.values():
            ev.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ---------------------------------------------------------------- flushing

    def flush_once(self) -> int:
        """Make messages from every due incident; returns how many messages were made."""
        due = self.outbox.due_incidents(self.clock())
        batches: dict[str, list[Incident]] = {}
        for inc in due:
            batches.setdefault(inc.batch, []).append(inc)
        names = [s.name for s in self.sinks]
        made = 0
        for incidents in batches.values():
            alerts = [i.alert for i in incidents]
            alert = alerts[0] if len(alerts) == 1 else self.fold(alerts)
            try:
                alert = self.enrich(alert)
            except Exception:
                log.exception("outbox.enrich_failed", key=alert.key)
            self.outbox.make_message([i.id for i in incidents], alert, names)
            log.info(
                "outbox.message_made",
                key=alert.key,
                kind=alert.kind,
                process=alert.process,
                incidents=len(incidents),
            )
            made += 1
        if made:
            for ev in self._sink_wake.values():
                ev.set()
            try:
                self.outbox.prune(self.keep)
            except sqlite3.Error as exc:
                log.warning("outbox.prune_failed", error=str(exc))
        return made

    def _flusher(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush_once()
                nd = self.outbox.next_due()
            except Exception:
                log.exception("outbox.flush_failed")
                nd = self.clock() + 1.0
            wait = 1.0 if nd is None else min(1.0, max(0.0, nd - self.clock()))
            self._flush_wake.wait(wait)
            self._flush_wake.clear()
        self.outbox.close()

    # ---------------------------------------------------------------- delivering

    def deliver_once(self, sink: Sink) -> bool:
        """Try every due delivery of ``sink``; False when the sink failed (stop for now)."""
        now = self.clock()
        for message_id, alert, attempts in self.outbox.pending(sink.name, now):
            if self._stop.is_set():
                return True
            try:
                sink.send(alert)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
                expired = self.clock() - self.outbox.created(message_id) > self.retry_for
                retry_at = (
                    None
                    if expired
                    else self.clock()
                    + backoff_delay(attempts, self.retry_base, self.retry_max, self.rng)
                )
                self.outbox.failed(message_id, sink.name, reason, retry_at)
                log.warning(
                    "outbox.delivery_failed",
                    sink=sink.name,
                    key=alert.key,
                    attempts=attempts + 1,
                    error=reason,
                    retry_in=None if retry_at is None else round(retry_at - self.clock(), 2),
                    gave_up=retry_at is None,
                )
                return False
            self.outbox.delivered(message_id, sink.name)
            log.info("outbox.delivered", sink=sink.name, key=alert.key, kind=alert.kind)
        return True

    def _deliverer(self, sink: Sink) -> None:
        wake = self._sink_wake[sink.name]
        while not self._stop.is_set():
            try:
                ok = self.deliver_once(sink)
                nxt = self.outbox.next_attempt(sink.name)
            except Exception:
                log.exception("outbox.deliver_loop_failed", sink=sink.name)
                ok, nxt = False, self.clock() + 1.0
            if ok and nxt is not None and nxt <= self.clock():
                continue
            wait = 5.0 if nxt is None else min(5.0, max(0.01, nxt - self.clock()))
            wake.wait(wait)
            wake.clear()
        self.outbox.close()
