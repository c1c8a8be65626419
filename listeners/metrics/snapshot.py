"""What the exporter exports, as plain values: a process view, a snapshot of the state, usage.

Copies taken under the state's lock; the renderers, the status page and the /proc reader work on
these and never on the live state.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from listeners.core.names import full_name

__all__ = ["ProcessView", "Snapshot", "SnapshotSource", "Usage"]


class ProcessView(NamedTuple):
    """One process as the exporter last knew it (a copy taken under the state lock)."""

    group: str
    name: str
    state: str
    pid: int | None
    start_time: float | None
    exit_status: int | None
    restarts: int
    unexpected_exits: int
    fatal: int
    memory_limit: int | None
    memory_restarts: int
    crash_looping: bool
    #: from the health listener's bus status (None when health does not watch it)
    probe_success: int | None = None
    heartbeat_age: float | None = None
    backoff_seconds: float | None = None
    #: Exits supervisord expected (``exitcodes=``): planned, e.g. a queue worker's max jobs.
    planned_exits: int = 0
    #: memmon announced it stopped restarting this process (restarts exhausted).
    memory_gave_up: bool = False
    #: When the exporter last saw the state change (unix time), 0 when unknown.
    changed_at: float = 0.0
    #: exits counted per reason (listeners.core.exits.REASONS), and the last one's reason
    exits: tuple[tuple[str, int], ...] = ()
    exit_reason: str | None = None
    exit_reason_text: str | None = None
    #: memmon announced it may not read this process's memory (so it does not judge it).
    memory_unreadable: bool = False

    @property
    def full_name(self) -> str:
        return full_name(self.group, self.name)


class OutboxView(NamedTuple):
    """crashmail's outbox as it last announced it (``OutboxTrouble``, ``DeliveryHealth``)."""

    #: True while crashmail cannot write its outbox: new alerts wait in its memory
    failing: bool = False
    #: what the write failed with (SQLite's words: "database or disk is full", "locked")
    error: str = ""
    #: alerts held in memory until the outbox takes writes again
    spooled: int = 0
    #: alerts lost because that memory spool was full too
    dropped: int = 0


class Snapshot(NamedTuple):
    """Everything a scrape renders, copied at once so concurrent scrapes stay consistent."""

    up: bool
    version: str | None
    identification: str | None
    processes: tuple[ProcessView, ...]
    events: int
    lost_events: int
    reconcile_errors: int
    #: crashmail's deliveries per sink, from its bus announcements: (sink, pending, failures).
    alert_sinks: tuple[tuple[str, int, int], ...] = ()
    #: ``group:name`` memmon may not read, as it last announced; None until memmon announced
    #: anything (then it runs here, and an empty tuple says it reads every process).
    memmon_unreadable: tuple[str, ...] | None = None
    #: crashmail's outbox; None until crashmail announced anything on the bus.
    outbox: OutboxView | None = None
    #: how memmon measures against its ceilings, as it announced: (measure, cumulative);
    #: None until it announced its limits
    memmon_measure: tuple[str, bool] | None = None


class Usage(NamedTuple):
    """Resident memory and CPU time of a process and its descendants."""

    memory_bytes: int
    cpu_seconds: float
    #: the memory as memmon judges it against its ceiling (its measure, its tree or not);
    #: None for a process without a ceiling or that could not be read that way
    judged_bytes: int | None = None


class SnapshotSource(Protocol):
    """What the web side needs of the exporter's state: a consistent copy of its view."""

    def snapshot(self) -> Snapshot: ...
