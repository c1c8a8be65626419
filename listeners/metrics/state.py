"""The exporter's view of supervisord, fed by events and reconciles, copied out per scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from listeners.core import bus, protocol
from listeners.core.crashloop import DEFAULT_LOOP, CrashLoopDetector
from listeners.core.exits import ExitReason, classify
from listeners.core.names import full_name
from listeners.core.state import ProcessTable
from listeners.metrics.history import History
from listeners.metrics.snapshot import OutboxView, ProcessView, Snapshot

__all__ = ["ExporterState"]


class ExporterState:
    """The exporter's view of supervisord; every method takes the lock, scrapes copy it."""

    def __init__(
        self,
        *,
        loop: tuple[int, float] = DEFAULT_LOOP,
        ignore: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        history: History | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.history = history if history is not None else History(clock=clock)
        self.planned_exits: dict[str, int] = {}
        self.gave_up: set[str] = set()
        self.table = ProcessTable(clock=clock, ignore=ignore)
        self.loops = CrashLoopDetector(loop[0], loop[1], clock=monotonic)
        self.ignore = frozenset(ignore)
        self.limits: dict[str, int] = {}
        self.memory_restarts: dict[str, int] = {}
        self.health: bus.HealthStatus | None = None
        self.health_at = 0.0  # monotonic time health's status came: its holds count down
        self.monotonic = monotonic
        self.clock = clock
        # group:name -> unix time health's current hold of it ends (its Backoff messages)
        self.held_until: dict[str, float] = {}
        self.exits: dict[str, dict[str, int]] = {}
        self.last_exit: dict[str, ExitReason] = {}
        self.alert_sinks: dict[str, tuple[int, int]] = {}
        #: memmon's last word on what it may not read (None: memmon never announced anything)
        self.memmon_unreadable: tuple[str, ...] | None = None
        self.memmon_measure: tuple[str, bool] | None = None
        #: crashmail's outbox as it last announced (None: crashmail never spoke)
        self.outbox: OutboxView | None = None
        self.up = False
        self.version: str | None = None
        self.identification: str | None = None
        self.events = 0
        self.lost_events = 0
        self.reconcile_errors = 0
        self.reconciles = 0
        self.stale_events = 0

    def count_event(self) -> None:
        with self.lock:
            self.events += 1

    def apply_process(self, event: protocol.ProcessStateEvent) -> None:
        if event.full_name in self.ignore:
            return
        with self.lock:
            record = self.table.get(event.full_name)
            # Events buffered before we started arrive after the start-up reconcile, which
            # already holds their outcome: their from_state disagrees with our state. Skip
            # them; a real divergence (lost events) is fixed by the next reconcile.
            if record is not None and record.state != event.from_state:
                self.stale_events += 1
                return
            self.table.apply(event)
            key = event.full_name
            if not (event.state == "STOPPED" and self.held_until.get(key, 0.0) > self.clock()):
                # health's stop between two tries is the loop itself, not its end
                self.loops.observe(event)
            if event.state == "EXITED" and event.expected:
                self.planned_exits[key] = self.planned_exits.get(key, 0) + 1
                self._count_exit(key, classify(None, expected=True))
        self._record_transition(event)

    def _record_transition(self, event: protocol.ProcessStateEvent) -> None:
        state = event.state
        if state == "RUNNING":
            text = f"running, pid {event.pid}" if event.pid else "running"
        elif state == "EXITED":
            text = "exited as expected" if event.expected else "exited unexpectedly"
        elif state == "BACKOFF":
            text = "died before startsecs, backing off"
        elif state == "FATAL":
            text = "FATAL: supervisord gave up starting it"
        elif state in ("STARTING", "STOPPED"):
            text = state.lower()
        else:
            return
        self.history.record(event.full_name, state.lower(), text)

    def apply_group(self, event: protocol.ProcessGroupEvent) -> None:
        with self.lock:
            gone = [r.full_name for r in self.table if r.group == event.groupname]
            self.table.apply_group(event)
            if not event.added:
                for name in gone:
                    self.loops.forget(name)
                    self.held_until.pop(name, None)
                    self.planned_exits.pop(name, None)
                    self.gave_up.discard(name)
                if self.memmon_unreadable:
                    left = set(self.memmon_unreadable) - set(gone)
                    self.memmon_unreadable = tuple(sorted(left))
                self.history.forget(gone)

    def apply_bus(self, message: bus.Message) -> None:
        with self.lock:
            if isinstance(message, _FROM_MEMMON) and self.memmon_unreadable is None:
                self.memmon_unreadable = ()  # memmon runs; it names what it cannot read
            if isinstance(message, bus.ProcessesUnreadable):
                # each announcement replaces the last one; an empty list says all are read
                self.memmon_unreadable = tuple(sorted(set(message.processes)))
            elif isinstance(message, bus.MemoryLimits):
                self.limits = dict(message.limits)
                self.memmon_measure = (message.measure, message.cumulative)
                if message.exhausted is not None:  # memmon's own list: true after our restart
                    self.gave_up = set(message.exhausted)
            elif isinstance(message, bus.MemoryRestart) and not message.dry_run:
                key = full_name(message.group, message.name)
                self.memory_restarts[key] = self.memory_restarts.get(key, 0) + 1
                self.limits.setdefault(key, message.limit_bytes)
                self.gave_up.discard(key)
                self._count_exit(key, classify(None, memmon=True))
                self.history.record(
                    key,
                    "memmon",
                    f"restarted by memmon: {_mib(message.measured_bytes)} over"
                    f" {_mib(message.limit_bytes)} ({message.rule})",
                )
            elif isinstance(message, bus.RestartsExhausted):
                key = full_name(message.group, message.name)
                self.gave_up.add(key)
                self.limits.setdefault(key, message.limit_bytes)
                self.history.record(
                    key,
                    "memmon",
                    f"memmon gave up after {message.restarts} restarts in"
                    f" {message.window_seconds:.0f}s ({_mib(message.measured_bytes)})",
                )
            elif isinstance(message, bus.HealthStatus):
                self.health = message
                self.health_at = self.monotonic()
            elif isinstance(message, bus.Backoff):
                self.held_until[full_name(message.group, message.name)] = message.next_start
                if len(self.held_until) > 4096:
                    now = self.clock()
                    self.held_until = {k: t for k, t in self.held_until.items() if t > now}

            elif isinstance(message, bus.OutboxTrouble):
                self.outbox = OutboxView(
                    message.failing, message.error, message.spooled, message.dropped
                )
            elif isinstance(message, bus.DeliveryHealth):
                if self.outbox is None:
                    self.outbox = OutboxView()  # crashmail runs and has had no trouble
                names = set(message.pending) | set(message.failures)
                self.alert_sinks = {
                    n: (message.pending.get(n, 0), message.failures.get(n, 0)) for n in names
                }

    def _last_reason(self, name: str) -> tuple[str | None, str | None]:
        last = self.last_exit.get(name)
        return (last.reason, last.text) if last is not None else (None, None)

    def count_exit(self, name: str, reason: ExitReason) -> None:
        """An unexpected exit, classified once its status and stderr were fetched."""
        with self.lock:
            if self.table.get(name) is not None:
                self._count_exit(name, reason)

    def _count_exit(self, name: str, reason: ExitReason) -> None:
        counts = self.exits.setdefault(name, {})
        counts[reason.reason] = counts.get(reason.reason, 0) + 1
        self.last_exit[name] = reason

    def apply_reconcile(
        self, infos: list[dict[str, Any]], version: str, identification: str
    ) -> None:
        with self.lock:
            self.table.reconcile(infos)
            self.up = True
            self.version = version
            self.identification = identification
            self.reconciles += 1

    def without_exit_status(self, states: tuple[str, ...] = ("BACKOFF", "FATAL")) -> list[str]:
        """Processes in ``states`` whose last exit status is not known yet (a start that
        failed before startsecs, seen first at a reconcile: supervisord reports none)."""
        with self.lock:
            return [r.full_name for r in self.table if r.state in states and r.exit_status is None]

    def reconcile_failed(self) -> None:
        with self.lock:
            self.up = False
            self.reconcile_errors += 1

    def mark_down(self) -> None:
        with self.lock:
            self.up = False

    def add_lost(self, count: int) -> None:
        with self.lock:
            self.lost_events += count

    def set_exit_status(self, name: str, status: int) -> None:
        with self.lock:
            self.table.set_exit_status(name, status)
        self.history.record(name, "exit", f"exit status {status}")

    def snapshot(self) -> Snapshot:
        with self.lock:
            self.loops.check()
            looping = self.loops.looping()
            limits, mem_restarts = self.limits, self.memory_restarts
            unreadable = frozenset(self.memmon_unreadable or ())
            views = []
            for r in self.table:
                key = r.full_name
                reason, reason_text = self._last_reason(key)
                views.append(
                    ProcessView(
                        r.group,
                        r.name,
                        r.state,
                        r.pid,
                        r.start_time,
                        r.exit_status,
                        r.restarts,
                        r.unexpected_exits,
                        r.fatal,
                        limits.get(key),
                        mem_restarts.get(key, 0),
                        key in looping,
                        *_health_of(self.health, key, self.monotonic() - self.health_at),
                        self.planned_exits.get(key, 0),
                        key in self.gave_up,
                        r.changed_at,
                        tuple(sorted(self.exits.get(key, {}).items())),
                        reason,
                        reason_text,
                        key in unreadable,
                    )
                )
            procs = tuple(views)
            return Snapshot(
                self.up,
                self.version,
                self.identification,
                procs,
                self.events,
                self.lost_events,
                self.reconcile_errors,
                tuple((n, p, f) for n, (p, f) in sorted(self.alert_sinks.items())),
                self.memmon_unreadable,
                self.outbox,
                self.memmon_measure,
            )


#: The messages only memmon sends: any of them says memmon runs on this supervisord.
_FROM_MEMMON = (
    bus.MemoryLimits,
    bus.MemoryRestart,
    bus.RestartsExhausted,
    bus.RestartsHeld,
    bus.ProcessesUnreadable,
)


def _health_of(
    status: bus.HealthStatus | None, key: str, since: float
) -> tuple[int | None, float | None, float | None]:
    """health's figures for ``key``, ``since`` seconds after it sent them: a hold's time left
    and a heartbeat's age move on between two of its reports (every 15 s)."""
    if status is None:
        return None, None, None
    age = status.heartbeat_age.get(key)
    hold = status.backoff_seconds.get(key)
    return (
        status.probe_success.get(key),
        None if age is None else round(age + since, 3),
        None if hold is None else max(0.0, round(hold - since, 3)),
    )


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"
