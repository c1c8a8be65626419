"""The status page's data: one row per process ordered by trouble, the header counts, as JSON.

``GET /api/status`` serves ``status_document`` (documented in docs/exporter.md); the HTML page
and its script render the same rows, so the page, the script and any other client agree.
Sources that other listeners feed (probe restarts, hung, undelivered alerts) are read from the
snapshot when it carries them and reported as absent (``null``) otherwise.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from listeners.metrics.snapshot import ProcessView, Snapshot, Usage

__all__ = ["COUNTS", "Row", "rows", "status_document", "status_json", "summary"]

#: Header counts, in the order the page shows them: (key, label).
COUNTS = (
    ("fatal", "FATAL"),
    ("crash_looping", "crash-looping"),
    ("memory_gave_up", "memmon gave up"),
    ("over_ceiling", "over the ceiling"),
    ("hung", "hung"),
    ("backoff", "backing off"),
    ("alerts_undelivered", "alerts undelivered"),
    ("running", "running"),
)

#: Trouble ranks: lower sorts first.
_FATAL, _LOOP, _GAVE_UP, _OVER, _HUNG, _BACKOFF, _EXITED, _MOVING, _STOPPED, _OK = range(10)


_CALM = {
    "EXITED": _EXITED,
    "UNKNOWN": _EXITED,
    "STARTING": _MOVING,
    "STOPPING": _MOVING,
    "STOPPED": _STOPPED,
}


class Row(NamedTuple):
    """One process as the page shows it."""

    view: ProcessView
    memory_bytes: int | None
    over_ceiling: bool
    hung: bool | None
    probe_restarts: int | None
    exit_reason: str | None
    rank: int
    trouble: tuple[str, ...]
    #: resident memory of the process tree (``memory_bytes`` is what memmon's ceiling is
    #: compared with: memmon's measure once it announced it, else this)
    rss_bytes: int | None = None
    #: the memory as memmon measures it; None where memmon has no ceiling or said no measure
    judged_bytes: int | None = None

    @property
    def full_name(self) -> str:
        return self.view.full_name


def _row(p: ProcessView, usage: Usage | None) -> Row:
    # against memmon's ceiling: the memory as memmon measures it (PSS of one process, say),
    # not the tree's RSS, which counts the shared pages in every worker; RSS where memmon has
    # not said how it measures
    rss = usage.memory_bytes if usage else None
    judged = usage.judged_bytes if usage else None
    mem = judged if judged is not None else rss
    over = bool(mem is not None and p.memory_limit and mem > p.memory_limit)
    # Fields a later snapshot may carry (health listener, exit reasons): None when absent.
    # supervisor-health's view comes over the bus; None where health does not watch it.
    hung: bool | None = None if p.probe_success is None else p.probe_success == 0
    probe: int | None = getattr(p, "probe_restarts", None)
    # the last exit's cause in words ("ran out of PHP memory ..."), else its reason code
    reason: str | None = p.exit_reason_text or p.exit_reason
    held = f"backing off, next start in {p.backoff_seconds:.0f} s" if p.backoff_seconds else ""
    # Worst first: the first that holds sets the rank.
    checks = (
        (p.state == "FATAL", "FATAL", _FATAL),
        (p.crash_looping, "crash-looping", _LOOP),
        (p.memory_gave_up, "memmon gave up", _GAVE_UP),
        (over, "over the ceiling", _OVER),
        (bool(hung), "hung (probe failing)", _HUNG),
        (p.state == "BACKOFF" and not held, "backing off", _BACKOFF),
        (bool(held), held, _BACKOFF),
    )
    trouble = [label for holds, label, _ in checks if holds]
    rank = next((r for holds, _, r in checks if holds), _CALM.get(p.state, _OK))
    return Row(p, mem, over, hung, probe, reason, rank, tuple(trouble), rss, judged)


def rows(snap: Snapshot, usages: dict[str, Usage]) -> list[Row]:
    """Every process, the worst trouble first, then by name."""
    out = [_row(p, usages.get(p.full_name)) for p in snap.processes]
    out.sort(key=lambda r: (r.rank, r.view.group, r.view.name))
    return out


def summary(snap: Snapshot, table: list[Row]) -> dict[str, int | None]:
    """The header counts; a count whose source is not running here is None."""
    any_health = any(r.hung is not None for r in table)
    # crashmail's delivery health (pending per sink); None until crashmail has announced it
    undelivered = sum(pending for _, pending, _ in snap.alert_sinks) if snap.alert_sinks else None
    return {
        "fatal": sum(r.view.state == "FATAL" for r in table),
        "crash_looping": sum(r.view.crash_looping for r in table),
        "memory_gave_up": sum(r.view.memory_gave_up for r in table),
        "over_ceiling": sum(r.over_ceiling for r in table),
        "hung": sum(bool(r.hung) for r in table) if any_health else None,
        "backoff": sum(r.view.state == "BACKOFF" or bool(r.view.backoff_seconds) for r in table),
        "alerts_undelivered": undelivered if isinstance(undelivered, int) else None,
        "running": sum(r.view.state == "RUNNING" for r in table),
    }


def _process(r: Row, now: float) -> dict[str, Any]:
    p = r.view
    limit = p.memory_limit
    crash = p.unexpected_exits
    return {
        "group": p.group,
        "name": p.name,
        "state": p.state,
        "pid": p.pid,
        "uptime_seconds": (
            round(now - p.start_time, 1) if p.state == "RUNNING" and p.start_time else None
        ),
        "memory_bytes": r.rss_bytes,
        "memory_judged_bytes": r.judged_bytes,
        "memory_limit_bytes": limit,
        "headroom_bytes": (
            limit - r.memory_bytes if limit is not None and r.memory_bytes is not None else None
        ),
        "restarts": {
            "total": p.restarts,
            "crash": crash,
            "memory": p.memory_restarts,
            "probe": r.probe_restarts,
            "planned": p.planned_exits,
        },
        "exit_status": p.exit_status,
        "exit_reason": r.exit_reason,
        "crash_looping": p.crash_looping,
        "memory_gave_up": p.memory_gave_up,
        "over_ceiling": r.over_ceiling,
        "hung": r.hung,
        "trouble": list(r.trouble),
        "rank": r.rank,
    }


def status_document(snap: Snapshot, usages: dict[str, Usage], now: float) -> dict[str, Any]:
    """The ``/api/status`` document (schema version 1)."""
    table = rows(snap, usages)
    return {
        "version": 1,
        "time": round(now, 3),
        "supervisord": {
            "up": snap.up,
            "version": snap.version,
            "identification": snap.identification,
        },
        "counts": summary(snap, table),
        "memmon_unreadable": (
            None if snap.memmon_unreadable is None else list(snap.memmon_unreadable)
        ),
        "outbox": None if snap.outbox is None else snap.outbox._asdict(),
        # crashmail's delivery health per sink; null until crashmail has announced it
        "alert_sinks": (
            [{"sink": n, "pending": p, "failures": f} for n, p, f in snap.alert_sinks]
            if snap.alert_sinks
            else None
        ),
        "processes": [_process(r, now) for r in table],
    }


def status_json(snap: Snapshot, usages: dict[str, Usage], now: float) -> bytes:
    return json.dumps(status_document(snap, usages, now), separators=(",", ":")).encode()
