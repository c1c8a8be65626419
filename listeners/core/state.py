"""What a listener knows about supervisord's processes, learnt from events.

One ``getAllProcessInfo`` at start and a rare reconcile fill the table; PROCESS_STATE and
PROCESS_GROUP events keep it current in between, so nothing polls supervisord per check or
per scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from listeners.core.names import full_name
from listeners.core.protocol import ProcessGroupEvent, ProcessStateEvent

__all__ = ["STATES", "ProcessRecord", "ProcessTable"]

#: supervisord's process states, in its own order (supervisor/states.py).
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


@dataclass
class ProcessRecord:
    """One process as last seen; counters only ever grow while the listener runs."""

    group: str
    name: str
    state: str = "UNKNOWN"
    pid: int | None = None
    start_time: float | None = None
    exit_status: int | None = None
    restarts: int = 0
    unexpected_exits: int = 0
    fatal: int = 0
    started_before: bool = False
    changed_at: float = 0.0

    @property
    def full_name(self) -> str:
        return full_name(self.group, self.name)


class ProcessTable:
    """Processes by ``group:name``; ``ignore`` names the ones never to report (ourselves)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        ignore: Iterable[str] = (),
    ) -> None:
        self.clock = clock
        self.ignore = frozenset(ignore)
        self._records: dict[str, ProcessRecord] = {}
        #: ``group:name`` of the records the last reconcile dropped (for owners' own maps).
        self.removed: list[str] = []

    def __iter__(self) -> Iterator[ProcessRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def get(self, name: str) -> ProcessRecord | None:
        return self._records.get(name)

    def pids(self) -> dict[str, int]:
        """``group:name`` -> pid of every process that has one."""
        return {k: r.pid for k, r in self._records.items() if r.pid}

    def reconcile(self, infos: Iterable[Mapping[str, Any]]) -> list[ProcessRecord]:
        """Take ``getAllProcessInfo`` as the truth; returns records whose state changed."""
        seen: set[str] = set()
        changed: list[ProcessRecord] = []
        now = self.clock()
        for info in infos:
            group, name = str(info["group"]), str(info["name"])
            key = full_name(group, name)
            if key in self.ignore:
                continue
            seen.add(key)
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = ProcessRecord(group=group, name=name)
            state = str(info.get("statename", "UNKNOWN"))
            if state != record.state:
                record.changed_at = now
                changed.append(record)
            record.state = state
            record.pid = int(info.get("pid") or 0) or None
            start = float(info.get("start") or 0)
            record.start_time = start or record.start_time
            if start:
                record.started_before = True
            # supervisord resets exitstatus on spawn and never sets it for BACKOFF/FATAL, so
            # only EXITED and STOPPED (after a run) report a real one; otherwise keep ours.
            if state in ("EXITED", "STOPPED") and start:
                record.exit_status = int(info.get("exitstatus") or 0)
        self.removed = sorted(set(self._records) - seen)
        for key in self.removed:
            del self._records[key]
        return changed

    def apply(self, event: ProcessStateEvent) -> ProcessRecord | None:
        """Update from one PROCESS_STATE event; returns the record (None when ignored)."""
        key = event.full_name
        if key in self.ignore:
            return None
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = ProcessRecord(
                group=event.groupname, name=event.processname
            )
        now = self.clock()
        state = event.state
        if state == "STARTING":
            if record.started_before:
                record.restarts += 1
            record.started_before = True
            record.pid = None
        elif state == "RUNNING":
            record.pid = event.pid or record.pid
            record.start_time = now
        elif state in ("EXITED", "STOPPED", "BACKOFF", "FATAL"):
            record.pid = None
            if state == "EXITED" and event.expected is False:
                record.unexpected_exits += 1
            if state == "FATAL":
                record.fatal += 1
        elif state == "STOPPING":
            record.pid = event.pid or record.pid
        record.state = state
        record.changed_at = now
        return record

    def apply_group(self, event: ProcessGroupEvent) -> list[str]:
        """A removed group's processes go away (returned); an added group waits for events."""
        return [] if event.added else self.forget_group(event.groupname)

    def forget_group(self, group: str) -> list[str]:
        """The group's processes go (returned): it was removed, or a reconcile missed it."""
        gone = [k for k, r in self._records.items() if r.group == group]
        for key in gone:
            del self._records[key]
        return gone

    def set_exit_status(self, name: str, status: int) -> None:
        record = self._records.get(name)
        if record is not None:
            record.exit_status = status
