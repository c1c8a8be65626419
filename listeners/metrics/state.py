"""The exporter's view of supervisord, fed by events and reconciles, copied out per scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from listeners.core import bus, protocol
from listeners.core.crashloop import DEFAULT_LOOP, CrashLoopDetector
from listeners.core.state import ProcessTable
from listeners.metrics.snapshot import ProcessView, Snapshot

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
    ) -> None:
        self.lock = threading.Lock()
        self.table = ProcessTable(clock=clock, ignore=ignore)
        self.loops = CrashLoopDetector(loop[0], loop[1], clock=monotonic)
        self.ignore = frozenset(ignore)
        self.limits: dict[str, int] = {}
        self.memory_restarts: dict[str, int] = {}
        self.alert_sinks: dict[str, tuple[int, int]] = {}
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
            self.loops.observe(event)

    def apply_group(self, event: protocol.ProcessGroupEvent) -> None:
        with self.lock:
            gone = [r.full_name for r in self.table if r.group == event.groupname]
            self.table.apply_group(event)
            if not event.added:
                for name in gone:
                    self.loops.forget(name)

    def apply_bus(self, message: bus.Message) -> None:
        with self.lock:
            if isinstance(message, bus.MemoryLimits):
                self.limits = dict(message.limits)
            elif isinstance(message, bus.MemoryRestart) and not message.dry_run:
                key = f"{message.group}:{message.name}"
                self.memory_restarts[key] = self.memory_restarts.get(key, 0) + 1
                self.limits.setdefault(key, message.limit_bytes)
            elif isinstance(message, bus.DeliveryHealth):
                names = set(message.pending) | set(message.failures)
                self.alert_sinks = {
                    n: (message.pending.get(n, 0), message.failures.get(n, 0)) for n in names
                }

    def apply_reconcile(
        self, infos: list[dict[str, Any]], version: str, identification: str
    ) -> None:
        with self.lock:
            self.table.reconcile(infos)
            self.up = True
            self.version = version
            self.identification = identification
            self.reconciles += 1

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

    def snapshot(self) -> Snapshot:
        with self.lock:
            self.loops.check()
            looping = self.loops.looping()
            limits, mem_restarts = self.limits, self.memory_restarts
            procs = tuple(
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
                    limits.get(key := r.full_name),
                    mem_restarts.get(key, 0),
                    key in looping,
                )
                for r in self.table
            )
            return Snapshot(
                self.up,
                self.version,
                self.identification,
                procs,
                self.events,
                self.lost_events,
                self.reconcile_errors,
                tuple((n, p, f) for n, (p, f) in sorted(self.alert_sinks.items())),
            )
