"""The courier: turns due incidents into messages and delivers each to each sink once.

One flush thread folds due incidents into messages (flood control's batches) and writes out the
outbox's memory spool; one thread per sink delivers, with a total deadline per attempt, jittered
backoff, ``Retry-After`` honoured and permanent refusals given up at once.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from listeners.core.cutoff import CutoffCall
from listeners.core.log import RateLimitedLog, get_logger
from listeners.notify.alert import Alert
from listeners.notify.outbox import Incident, Outbox
from listeners.notify.sinks import Sink, SinkError, redact

__all__ = ["DEFAULT_DEADLINE", "Courier", "backoff_delay"]

log = get_logger("listeners.notify.outbox")

#: Seconds a sink call may take in all (connect, send, the whole reply) unless the sink says.
DEFAULT_DEADLINE = 60.0


def backoff_delay(
    attempts: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Jittered exponential backoff: between half and all of ``min(cap, base * 2**attempts)``."""
    ceiling = min(cap, base * 2.0 ** min(attempts, 30))
    return float(ceiling * (0.5 + 0.5 * rng()))


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
        deadline: float = DEFAULT_DEADLINE,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self.deadline = deadline
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
        # the outbox's own trouble (disk full, locked) is said once per 10 s, in one line:
        # outbox.spool_* and the bus tell the operator; a traceback a second tells nothing
        self._log_flush_failed = RateLimitedLog("outbox.flush_failed", log.warning)
        self._log_deliver_failed = RateLimitedLog("outbox.deliver_loop_failed", log.warning)
        self._flush_wake = threading.Event()
        self._sink_wake = {s.name: threading.Event() for s in self.sinks}
        self._threads: list[threading.Thread] = []
        # A send cut off by its deadline keeps running in its thread; no second one starts for
        # the same sink until it ends, so a receiver that trickles cannot pile threads up.
        self._hung: dict[str, threading.Thread] = {}

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
                if self.outbox.drain_spool():
                    self._flush_wake.set()
                self.outbox.flush_loops()
                self.flush_once()
                nd = self.outbox.next_due()
            except (sqlite3.Error, OSError) as exc:  # disk full, locked: said, retried
                self._log_flush_failed(error=f"{type(exc).__name__}: {exc}")
                nd = self.clock() + 1.0
            except Exception:
                log.exception("outbox.flush_failed")
                nd = self.clock() + 1.0
            wait = 1.0 if nd is None else min(1.0, max(0.0, nd - self.clock()))
            if self.outbox.failing is not None:
                wait = min(wait, 0.5)
            self._flush_wake.wait(wait)
            self._flush_wake.clear()
        try:
            self.outbox.drain_spool()  # a last chance for what waits in memory
            self.outbox.flush_loops()
        except (sqlite3.Error, OSError) as exc:
            log.error(
                "outbox.final_flush_failed",
                error=f"{type(exc).__name__}: {exc}",
                lost=self.outbox.spooled,
                hint="alerts still in memory are lost: free the outbox's disk",
            )
        except Exception:
            log.exception("outbox.flush_failed")
        self.outbox.close()

    # ---------------------------------------------------------------- delivering

    def send_within_deadline(self, sink: Sink, alert: Alert) -> None:
        """``sink.send(alert)`` with a total deadline; SinkError when it is not done in time.

        A socket timeout only bounds each read: a receiver that answers one byte at a time
        never trips it. The call runs in its own thread; at the deadline the sockets it opened
        are shut down, which ends it, so the next attempt is not held up. A call stuck where
        no socket is (a disk that does not answer) is left running, and the sink is not tried
        again until it has ended.
        """
        deadline = float(getattr(sink, "deadline", None) or self.deadline)
        hung = self._hung.get(sink.name)
        if hung is not None:
            if hung.is_alive():
                raise SinkError(
                    f"sink {sink.name}: the previous attempt is still hanging past its"
                    f" {deadline:g}s deadline"
                )
            del self._hung[sink.name]
        call = CutoffCall(lambda: sink.send(alert), name=f"send-{sink.name}")
        if call.run(deadline, grace=min(2.0, deadline)):
            return
        if call.alive:
            self._hung[sink.name] = call.thread
        raise SinkError(
            f"sink {sink.name}: no complete answer within the {deadline:g}s deadline"
            " (the receiver is too slow or trickles its reply); the connection was cut"
        )

    def deliver_once(self, sink: Sink) -> bool:
        """Try every due delivery of ``sink``; False when the sink failed (stop for now)."""
        now = self.clock()
        pending = self.outbox.pending(sink.name, now)
        if not pending:
            self.outbox.drop_orphans(sink.name)
        for message_id, alert, attempts in pending:
            if self._stop.is_set():
                return True
            try:
                self.send_within_deadline(sink, alert)
            except Exception as exc:
                self._failed(sink, message_id, alert, attempts, exc)
                return False
            self.outbox.delivered(message_id, sink.name)
            log.info("outbox.delivered", sink=sink.name, key=alert.key, kind=alert.kind)
        return True

    def _failed(
        self, sink: Sink, message_id: int, alert: Alert, attempts: int, exc: Exception
    ) -> None:
        reason = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
        reason = redact(reason)
        permanent = isinstance(exc, SinkError) and exc.permanent
        asked = exc.retry_after if isinstance(exc, SinkError) else None
        expired = self.clock() - self.outbox.created(message_id) > self.retry_for
        retry_at: float | None = None
        if not (permanent or expired):
            delay = backoff_delay(attempts, self.retry_base, self.retry_max, self.rng)
            if asked is not None:
                delay = max(delay, asked)
            retry_at = self.clock() + delay
        self.outbox.failed(
            message_id,
            sink.name,
            reason,
            retry_at,
            give_up_as="failed" if permanent else "expired",
        )
        fields = {
            "sink": sink.name,
            "key": alert.key,
            "attempts": attempts + 1,
            "error": reason,
            "retry_in": None if retry_at is None else round(retry_at - self.clock(), 2),
            "gave_up": retry_at is None,
        }
        if permanent:
            log.error("outbox.delivery_failed_permanently", **fields)
        else:
            log.warning("outbox.delivery_failed", **fields)

    def _deliverer(self, sink: Sink) -> None:
        wake = self._sink_wake[sink.name]
        while not self._stop.is_set():
            try:
                ok = self.deliver_once(sink)
                nxt = self.outbox.next_attempt(sink.name)
            except (sqlite3.Error, OSError) as exc:  # the outbox cannot be written: retried
                self._log_deliver_failed(sink=sink.name, error=f"{type(exc).__name__}: {exc}")
                ok, nxt = False, self.clock() + 1.0
            except Exception:
                log.exception("outbox.deliver_loop_failed", sink=sink.name)
                ok, nxt = False, self.clock() + 1.0
            if ok and nxt is not None and nxt <= self.clock():
                continue
            wait = 5.0 if nxt is None else min(5.0, max(0.01, nxt - self.clock()))
            wake.wait(wait)
            wake.clear()
        self.outbox.close()
