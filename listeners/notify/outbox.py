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

When an incident cannot be committed (disk full, database locked by another process, I/O
error) it waits in a bounded memory spool that the courier's flush thread writes out as soon as
the file takes writes again; the event loop never waits on SQLite for more than
``RECORD_TIMEOUT``. A row that cannot be read back (damaged JSON, unknown kind) is moved to
``quarantine`` so it never stops the rows after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from listeners.core import bus
from listeners.core.log import get_logger
from listeners.notify.alert import Alert

__all__ = [
    "RECORD_TIMEOUT",
    "SPOOL_LIMIT",
    "Incident",
    "Outbox",
    "OutboxHealth",
    "OutboxOwnerError",
    "Owner",
    "ask_identifier",
    "health_announcer",
]

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
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    row_id INTEGER,
    key TEXT,
    body TEXT,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
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

#: Longest the event loop waits for SQLite's lock when it commits an incident (seconds).
RECORD_TIMEOUT = 0.5
#: Incidents kept in memory while the outbox cannot be written; beyond, they are counted as lost
#: and reported by an ``events_lost`` alert once the outbox works again.
SPOOL_LIMIT = 10000


@dataclass(frozen=True)
class OutboxHealth:
    """What ``on_health`` is told when committing starts failing or works again."""

    failing: bool
    error: str
    spooled: int
    dropped: int


@dataclass(frozen=True)
class Incident:
    """One recorded alert that is not a message yet."""

    id: int
    batch: str
    alert: Alert


def health_announcer(
    host: str,
    send: Callable[[str, str], None],
    submit: Callable[[Callable[[], None]], None],
) -> Callable[[OutboxHealth], None]:
    """An ``on_health`` that publishes ``bus.OutboxTrouble`` with ``send(type, data)``
    (sendRemoteCommEvent), run through ``submit`` so neither the event loop nor a courier
    thread waits on supervisord."""

    def announce(health: OutboxHealth) -> None:
        msg = bus.OutboxTrouble(host, health.failing, health.error, health.spooled, health.dropped)

        def publish() -> None:
            try:
                send(bus.CRASHMAIL_TYPE, bus.encode(msg))
            except Exception as exc:  # SupervisorError mostly; never kill the worker
                log.warning("outbox.announce_failed", error=str(exc))

        submit(publish)

    return announce


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE): committed at the end, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # a COMMIT that failed (disk full) may have ended the transaction already: a second
        # error from ROLLBACK ("no transaction is active") must not hide the first one
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


#: Save one crash-loop incident's state (the event loop's write and the courier's deferred one).
_UPSERT_LOOP = (
    "INSERT INTO loops (process, body) VALUES (?, ?)"
    " ON CONFLICT (process) DO UPDATE SET body = excluded.body"
)


@dataclass(frozen=True)
class Owner:
    """Whose outbox it is: supervisord's server URL and its identification (``identifier=``
    in ``[supervisord]``, getIdentification). The URL alone cannot tell two supervisords in
    two containers on one state volume apart: both say ``unix:///run/supervisor.sock``."""

    url: str
    #: None: not known (a claim stored before identifiers were, or supervisord did not answer)
    identifier: str | None = None

    def encode(self) -> str:
        return json.dumps({"identifier": self.identifier, "url": self.url}, sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> Owner:
        """A stored claim; a bare URL is the claim of a crashmail older than identifiers."""
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("url"), str):
                ident = data.get("identifier")
                return cls(data["url"], ident if isinstance(ident, str) else None)
        return cls(text)

    def __str__(self) -> str:
        return self.url if self.identifier is None else f"{self.identifier!r} at {self.url}"


class OutboxOwnerError(Exception):
    """The outbox was made by the crashmail of another supervisord."""

    def __init__(self, path: str, owner: Owner, mine: Owner) -> None:
        # The default path is derived from the URL alone: with the same URL only another
        # --outbox (or state dir) helps; with another URL, so does the default.
        other = "" if owner.url == mine.url else ", or leave --outbox out for the default"
        super().__init__(
            f"the outbox {path} belongs to the crashmail of another supervisord ({owner}), not"
            f" to this one ({mine}); give this one its own --outbox PATH{other}"
        )
        self.owner = owner
        self.mine = mine


def ask_identifier(ask: Callable[[], str]) -> str | None:
    """supervisord's identification for the outbox's claim; None (URL checked alone) when it
    cannot be asked, e.g. a supervisord without ``[rpcinterface:supervisor]``."""
    try:
        return ask()
    except Exception as exc:  # SupervisorError mostly; crashmail still works without it
        log.warning(
            "outbox.owner_unchecked",
            error=str(exc),
            hint="the outbox's owner is checked by server URL only",
        )
        return None


class Outbox:
    """SQLite storage of incidents, messages and per-sink deliveries."""

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        on_health: Callable[[OutboxHealth], None] = lambda h: None,
        record_timeout: float = RECORD_TIMEOUT,
        spool_limit: int = SPOOL_LIMIT,
    ) -> None:
        self.path = path
        self.clock = clock
        self.on_health = on_health
        self.record_timeout = record_timeout
        self.spool_limit = spool_limit
        self._local = threading.local()
        self._spool: deque[tuple[Alert, float, str]] = deque()
        self._spool_lock = threading.Lock()
        # One writer at a time inside this process, the event loop first: SQLite's own busy
        # handler polls, and a courier committing message after message would starve the loop.
        self._write_lock = threading.Lock()
        self._loop_waiting = 0
        self._dropped = 0
        self._dropped_host = ""
        self.failing: str | None = None
        #: (spooled, dropped) as last announced, so a longer outage keeps the figures current
        self._announced: tuple[int, int] = (0, 0)
        #: loop states the event loop could not write: process -> JSON (None: delete)
        self._unsaved_loops: dict[str, str | None] = {}
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

    def _record_db(self) -> sqlite3.Connection:
        """The event loop's own connection: it waits at most ``record_timeout`` for a lock."""
        db: sqlite3.Connection | None = getattr(self._local, "rec", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.record_timeout, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout={int(self.record_timeout * 1000)}")
            db.execute("PRAGMA synchronous=FULL")
            self._local.rec = db
        return db

    def close(self) -> None:
        if self.spooled:
            log.error(
                "crashmail.spool_lost",
                incidents=self.spooled,
                error=self.failing,
                hint="the outbox could not be written before crashmail stopped",
            )
        for attr in ("db", "rec"):
            db: sqlite3.Connection | None = getattr(self._local, attr, None)
            if db is not None:
                db.close()
                setattr(self._local, attr, None)

    @contextlib.contextmanager
    def _courier_write(self) -> Iterator[None]:
        """Hold the in-process write lock for a courier thread; give way to a waiting loop."""
        while self._loop_waiting:
            time.sleep(0.001)
        with self._write_lock:
            yield

    # ---------------------------------------------------------------- incidents

    def record(self, alert: Alert, *, due: float, batch: str | None = None) -> bool:
        """Commit one incident; False when its key was recorded before (a redelivery).

        Never raises for a storage problem and never waits longer than ``record_timeout``: an
        incident that cannot be committed goes to the memory spool (see ``drain_spool``).
        """
        with self._spool_lock:
            if self._spool:
                # Keep the order: while the spool has rows, new ones queue behind them.
                return self._to_spool(alert, due, batch or alert.key, self.failing or "")
        self._loop_waiting += 1
        try:
            got = self._write_lock.acquire(timeout=self.record_timeout)
        finally:
            self._loop_waiting -= 1
        if not got:
            with self._spool_lock:
                return self._to_spool(
                    alert, due, batch or alert.key, "the outbox is busy (a write is stuck)"
                )
        try:
            cur = self._record_db().execute(
                "INSERT OR IGNORE INTO incidents (key, batch, body, created, due)"
                " VALUES (?, ?, ?, ?, ?)",
                (alert.key, batch or alert.key, alert.to_json(), self.clock(), due),
            )
        except sqlite3.Error as exc:
            with self._spool_lock:
                return self._to_spool(alert, due, batch or alert.key, str(exc))
        finally:
            self._write_lock.release()
        return cur.rowcount == 1

    def _to_spool(self, alert: Alert, due: float, batch: str, error: str) -> bool:
        """Under ``_spool_lock``: keep an incident that the file did not take."""
        if any(a.key == alert.key for a, _, _ in self._spool):
            return False
        if len(self._spool) >= self.spool_limit:
            self._dropped += 1
            self._dropped_host = alert.host
            log.error(
                "outbox.spool_full",
                key=alert.key,
                kind=alert.kind,
                process=alert.process,
                dropped=self._dropped,
                limit=self.spool_limit,
            )
        else:
            self._spool.append((alert, due, batch))
            log.error(
                "outbox.commit_failed",
                path=self.path,
                error=error,
                key=alert.key,
                kind=alert.kind,
                process=alert.process,
                spooled=len(self._spool),
                hint="kept in memory and written when the outbox takes writes again;"
                " free disk space or stop what holds the database lock",
            )
        if self.failing is None:
            self.failing = error or "commit failed"
            self._announce(OutboxHealth(True, self.failing, len(self._spool), self._dropped))
        return True

    def _announce(self, health: OutboxHealth) -> None:
        self._announced = (health.spooled, health.dropped)
        try:
            self.on_health(health)
        except Exception:
            log.exception("outbox.health_callback_failed")

    @property
    def spooled(self) -> int:
        """Incidents waiting in memory for the outbox to take writes again."""
        with self._spool_lock:
            return len(self._spool)

    def drain_spool(self) -> int:
        """Write spooled incidents to the file (courier thread); returns how many were written."""
        with self._spool_lock:
            items = list(self._spool)
            dropped, host = self._dropped, self._dropped_host
        if not items and not dropped:
            return 0
        rows = [(a.key, b, a.to_json(), self.clock(), d) for a, d, b in items]
        if dropped:
            lost = Alert(
                kind="events_lost",
                host=host,
                time=self.clock(),
                count=dropped,
                message=f"{dropped} alerts were lost: the outbox {self.path} could not be written"
                f" and the memory spool of {self.spool_limit} incidents was full.",
            )
            rows.append((lost.key, lost.key, lost.to_json(), self.clock(), self.clock()))
        db = self._record_db()  # short lock wait: this is retried twice a second anyway
        try:
            with self._courier_write():
                self._insert_all(db, rows)
        except sqlite3.Error as exc:
            log.warning("outbox.spool_still_failing", error=str(exc), spooled=len(items))
            # the courier retries twice a second: tell the bus when the figures moved since
            # the first announcement, so the exporter's gauges follow a long outage
            figures = (len(items), dropped)
            if figures != self._announced:
                self._announce(OutboxHealth(True, self.failing or str(exc), *figures))
            return 0
        with self._spool_lock:
            for _ in items:
                self._spool.popleft()
            self._dropped -= dropped
            left = len(self._spool)
            recovered = not self._spool and not self._dropped
            if recovered:
                self.failing = None
        log.warning("outbox.spool_written", written=len(items), lost=dropped, left=left)
        if recovered:
            self._announce(OutboxHealth(False, "", 0, 0))
        return len(items)

    @staticmethod
    def _insert_all(db: sqlite3.Connection, rows: list[tuple[str, str, str, float, float]]) -> None:
        with _immediate(db):
            db.executemany(
                "INSERT OR IGNORE INTO incidents (key, batch, body, created, due)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def due_incidents(self, now: float) -> list[Incident]:
        """Due incidents, oldest first; a row that cannot be read is quarantined, not returned."""
        rows = self._db().execute(
            "SELECT id, key, batch, body FROM incidents WHERE message_id IS NULL AND due <= ?"
            " ORDER BY id",
            (now,),
        )
        out: list[Incident] = []
        for i, key, b, body in rows.fetchall():
            try:
                out.append(Incident(int(i), str(b), Alert.from_json(body)))
            except Exception as exc:  # any damage: bad JSON, unknown kind, wrong field types
                self._quarantine("incidents", int(i), key, body, exc)
        return out

    def _quarantine(
        self, source: str, row_id: int, key: object, body: object, exc: Exception
    ) -> None:
        """Move a damaged row aside so the rows after it are still delivered."""
        with self._courier_write():
            error = f"{type(exc).__name__}: {exc}"[:500]
            db = self._db()
            with _immediate(db):
                db.execute(
                    "INSERT INTO quarantine (source, row_id, key, body, error, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        source,
                        row_id,
                        None if key is None else str(key),
                        str(body),
                        error,
                        self.clock(),
                    ),
                )
                if source == "incidents":
                    db.execute("DELETE FROM incidents WHERE id = ?", (row_id,))
                else:
                    db.execute(
                        "UPDATE deliveries SET state = 'quarantined', last_error = ?"
                        " WHERE message_id = ?",
                        (error, row_id),
                    )
            log.error(
                "outbox.row_quarantined",
                table=source,
                row=row_id,
                key=key,
                error=error,
                hint="the row is kept in the quarantine table; the others are delivered",
            )

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
        with self._courier_write():
            db = self._db()
            now = self.clock()
            with _immediate(db):
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
            return int(message_id)

    def pending(self, sink: str, now: float, limit: int = 50) -> list[tuple[int, Alert, int]]:
        """(message id, alert, attempts so far) due for ``sink``, oldest first."""
        rows = self._db().execute(
            "SELECT d.message_id, m.key, m.body, d.attempts FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            " WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt <= ?"
            " ORDER BY d.message_id LIMIT ?",
            (sink, now, limit),
        )
        out: list[tuple[int, Alert, int]] = []
        for i, key, body, a in rows.fetchall():
            try:
                out.append((int(i), Alert.from_json(body), int(a)))
            except Exception as exc:  # any damage: bad JSON, unknown kind, wrong field types
                self._quarantine("messages", int(i), key, body, exc)
        return out

    def next_attempt(self, sink: str) -> float | None:
        """When ``sink`` has its next due delivery; only deliveries that have a message count."""
        row = (
            self._db()
            .execute(
                "SELECT MIN(d.next_attempt) FROM deliveries d"
                " JOIN messages m ON m.id = d.message_id"
                " WHERE d.sink = ? AND d.state = 'pending'",
                (sink,),
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def drop_orphans(self, sink: str) -> int:
        """Mark pending deliveries whose message row is gone as ``orphaned``; returns how many."""
        with self._courier_write():
            cur = self._db().execute(
                "UPDATE deliveries SET state = 'orphaned', last_error = 'message row missing'"
                " WHERE sink = ? AND state = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = deliveries.message_id)",
                (sink,),
            )
            if cur.rowcount:
                log.error("outbox.orphaned_deliveries", sink=sink, count=cur.rowcount)
            return int(cur.rowcount)

    def delivered(self, message_id: int, sink: str) -> None:
        with self._courier_write():
            self._db().execute(
                "UPDATE deliveries SET state = 'delivered', delivered_at = ?,"
                " attempts = attempts + 1 WHERE message_id = ? AND sink = ?",
                (self.clock(), message_id, sink),
            )

    def failed(
        self,
        message_id: int,
        sink: str,
        error: str,
        retry_at: float | None,
        *,
        give_up_as: str = "expired",
    ) -> None:
        """Record a failed attempt; ``retry_at`` None gives the delivery up (``give_up_as``:
        ``expired`` after the retry window, ``failed`` for a permanent error)."""
        with self._courier_write():
            self._db().execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?,"
                " next_attempt = COALESCE(?, next_attempt),"
                " state = CASE WHEN ? IS NULL THEN ? ELSE state END"
                " WHERE message_id = ? AND sink = ?",
                (error[:500], retry_at, retry_at, give_up_as, message_id, sink),
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
        with self._courier_write():
            db = self._db()
            with _immediate(db):
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
            return len(done)

    # ---------------------------------------------------------------- incidents, owner, health

    def claim(self, owner: Owner | str) -> None:
        """Mark the outbox as ``owner``'s, or raise OutboxOwnerError when another's mark is
        there. A mark without identifier (older crashmail) and the same URL is taken over
        silently; an owner whose identifier is unknown is checked by URL only."""
        mine = Owner(owner) if isinstance(owner, str) else owner
        db = self._db()
        with _immediate(db):
            row = db.execute("SELECT identity FROM owner WHERE one = 1").fetchone()
            stored = None if row is None else Owner.decode(str(row[0]))
            if stored is None or (
                stored.url == mine.url and stored.identifier is None and mine.identifier is not None
            ):
                db.execute(
                    "INSERT INTO owner (one, identity) VALUES (1, ?)"
                    " ON CONFLICT (one) DO UPDATE SET identity = excluded.identity",
                    (mine.encode(),),
                )
                return
        known = None not in (stored.identifier, mine.identifier)
        if stored.url != mine.url or (known and stored.identifier != mine.identifier):
            raise OutboxOwnerError(self.path, stored, mine)

    def open_loops(self) -> dict[str, str]:
        """Open crash-loop incidents: process -> JSON state."""
        return {str(p): str(b) for p, b in self._db().execute("SELECT process, body FROM loops")}

    # The loop-state calls below run on the event loop, like record(): each waits at most
    # ``record_timeout`` and never raises for a storage problem. A loop state that cannot be
    # written is kept and written by the courier once the file takes writes (flush_loops);
    # it only matters for a restart, and the loop's alerts themselves go through record().

    def _loop_call(self, what: str, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor | None:
        """One statement on the event loop's connection under the write lock; None on failure."""
        self._loop_waiting += 1
        try:
            got = self._write_lock.acquire(timeout=self.record_timeout)
        finally:
            self._loop_waiting -= 1
        if not got:
            log.warning("outbox.loop_state_deferred", what=what, error="the outbox is busy")
            return None
        try:
            return self._record_db().execute(sql, args)
        except sqlite3.Error as exc:
            log.warning("outbox.loop_state_deferred", what=what, error=str(exc))
            return None
        finally:
            self._write_lock.release()

    def save_loop(self, process: str, body: str) -> None:
        with self._spool_lock:
            self._unsaved_loops.pop(process, None)
        done = self._loop_call(
            "save_loop",
            _UPSERT_LOOP,
            (process, body),
        )
        if done is None:
            with self._spool_lock:
                self._unsaved_loops[process] = body

    def close_loop(self, process: str) -> None:
        with self._spool_lock:
            self._unsaved_loops.pop(process, None)
        done = self._loop_call("close_loop", "DELETE FROM loops WHERE process = ?", (process,))
        if done is None:
            with self._spool_lock:
                self._unsaved_loops[process] = None

    def flush_loops(self) -> int:
        """Write loop states the event loop could not (courier thread); how many were."""
        with self._spool_lock:
            todo = dict(self._unsaved_loops)
        if not todo:
            return 0
        db = self._db()
        try:
            with self._courier_write(), _immediate(db):
                for process, body in todo.items():
                    if body is None:
                        db.execute("DELETE FROM loops WHERE process = ?", (process,))
                    else:
                        db.execute(_UPSERT_LOOP, (process, body))
        except sqlite3.Error as exc:
            log.debug("outbox.loop_state_still_deferred", error=str(exc), waiting=len(todo))
            return 0
        with self._spool_lock:
            for process, body in todo.items():
                if self._unsaved_loops.get(process, body) == body:
                    self._unsaved_loops.pop(process, None)
        return len(todo)

    def unsent(self, key: str) -> list[Alert]:
        """The incident recorded under ``key`` while no message has been made of it yet
        (nothing when the outbox cannot be read now)."""
        try:
            rows = self._record_db().execute(
                "SELECT body FROM incidents WHERE key = ? AND message_id IS NULL", (key,)
            )
            return [Alert.from_json(b) for (b,) in rows]
        except sqlite3.Error as exc:
            log.warning("outbox.loop_state_deferred", what="unsent", error=str(exc))
            return []

    def update_unsent(self, key: str, alert: Alert) -> bool:
        """Replace the body of an incident no message has been made of; False when too late
        (or when the outbox cannot be written now: the caller then records its own alert)."""
        cur = self._loop_call(
            "update_unsent",
            "UPDATE incidents SET body = ? WHERE key = ? AND message_id IS NULL",
            (alert.to_json(), key),
        )
        return cur is not None and cur.rowcount == 1

    def withdraw_unsent(self, key: str) -> bool:
        """Forget the incident recorded under ``key`` if no message has been made of it yet;
        False when too late or when the outbox cannot be written now (it then goes out)."""
        cur = self._loop_call(
            "withdraw_unsent", "DELETE FROM incidents WHERE key = ? AND message_id IS NULL", (key,)
        )
        return cur is not None and cur.rowcount == 1

    def drop_unsent(self, process: str, kinds: Sequence[str], now: float) -> int:
        """Forget incidents of ``process`` that still wait, in a flood-control batch or for
        their ``--group-wait`` (a crash loop's alert covers them); those due by ``now`` are
        left to go. When the outbox cannot be written now nothing is dropped (an extra
        alert, never a lost one)."""
        try:
            rows = self._record_db().execute(
                "SELECT id, body FROM incidents WHERE message_id IS NULL"
                " AND (batch != key OR due > ?)",
                (now,),
            )
            ids = [
                i
                for i, body in rows
                if (a := Alert.from_json(body)).process == process and a.kind in kinds
            ]
        except sqlite3.Error as exc:
            log.warning("outbox.loop_state_deferred", what="drop_unsent", error=str(exc))
            return 0
        with self._spool_lock:  # spooled ones wait too: the loop alert covers them as well
            kept = [
                (a, due, batch)
                for a, due, batch in self._spool
                if not (a.process == process and a.kind in kinds and (batch != a.key or due > now))
            ]
            dropped_spooled = len(self._spool) - len(kept)
            self._spool.clear()
            self._spool.extend(kept)
        if not ids:
            return dropped_spooled
        placeholders = ", ".join("?" * len(ids))
        cur = self._loop_call(
            "drop_unsent",
            f"DELETE FROM incidents WHERE id IN ({placeholders})",  # noqa: S608 - only ?s
            tuple(ids),
        )
        return dropped_spooled + (len(ids) if cur is not None else 0)

    def delivery_health(self, sinks: Iterable[str]) -> dict[str, tuple[int, int]] | None:
        """sink -> (deliveries pending now, failed attempts ever) for each of ``sinks``; None
        when the outbox cannot be read now. Read on the event loop: through the connection that
        waits at most ``record_timeout`` for a lock, never the delivery threads' 30 s one."""
        out = dict.fromkeys(sinks, (0, 0))
        try:
            db = self._record_db()
            for sink, n in db.execute(
                "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
            ):
                if sink in out:
                    out[sink] = (int(n), out[sink][1])
            for sink, n in db.execute("SELECT sink, failures FROM sink_failures"):
                if sink in out:
                    out[sink] = (out[sink][0], int(n))
        except sqlite3.Error as exc:
            log.warning("outbox.health_unreadable", error=str(exc))
            return None
        return out
