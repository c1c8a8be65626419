"""Flood control: when an incident is sent, and how a batch of them folds into one summary."""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from listeners.core.names import group_of, info_name
from listeners.notify.alert import Alert, iso_time

__all__ = ["FloodControl", "fold", "summary_text"]


class FloodControl:
    """Decides when an incident is sent: now, or folded into the open batch.

    An alert goes at once when its process had no alert of the same kind within the window and
    fewer than ``burst`` alerts went at once within the window. Everything else joins one
    batch, sent as one summary when the window since the batch opened is over; so a storm of
    any size gives at most ``burst + 1`` messages per window and sink.
    """

    def __init__(self, window: float, burst: int) -> None:
        self.window = window
        self.burst = burst
        self._last: dict[tuple[str, str], float] = {}
        self._recent: deque[float] = deque()
        self._batch: tuple[str, float] | None = None

    def resume(self, batches: dict[str, float]) -> None:
        """After a restart, join the batch the outbox still holds instead of opening another."""
        open_ = [(b, d) for b, d in batches.items() if b.startswith("batch:")]
        if open_:
            self._batch = max(open_, key=lambda bd: bd[1])

    def forget_group(self, group: str) -> int:
        """The group was removed from supervisord: when its processes last alerted goes."""
        gone = [k for k in self._last if ":" in k[0] and group_of(k[0]) == group]
        for key in gone:
            del self._last[key]
        return len(gone)

    def schedule(self, alert: Alert, now: float) -> tuple[float, str]:
        """(due time, batch key) for ``alert``."""
        kind = f"resolved:{alert.resolves}" if alert.kind == "resolved" else alert.kind
        key = (alert.process or alert.host, kind)
        while self._recent and now - self._recent[0] >= self.window:
            self._recent.popleft()
        if self._batch is not None and self._batch[1] <= now:
            self._batch = None
        last = self._last.get(key)
        if alert.kind == "events_lost":
            # The one notice per reconcile: never folded, so its advice is read.
            return now, alert.key
        if (last is None or now - last >= self.window) and len(self._recent) < self.burst:
            self._last[key] = now
            self._recent.append(now)
            return now, alert.key
        if self._batch is None:
            self._batch = (f"batch:{alert.key}", now + self.window)
        return self._batch[1], self._batch[0]


def fold(alerts: list[Alert]) -> Alert:
    """One summary naming every process of a batch, with counts per process and kind."""
    items: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    alerts = sorted(alerts, key=lambda a: a.time)
    for a in alerts:
        k = (a.kind, a.group, a.name, a.resolves or "")
        item = items.get(k)
        if item is None:
            items[k] = {
                "kind": a.kind,
                "group": a.group,
                "name": a.name,
                "count": a.count,
                "time": a.time,
                "last": a.time,
                "exit_status": a.exit_status,
                "resolves": a.resolves,
                "pid": a.details.get("pid"),
            }
        else:
            item["count"] += a.count
            item["last"] = a.time
            item["pid"] = a.details.get("pid")
            if a.exit_status is not None:
                item["exit_status"] = a.exit_status  # the latest reason
    # In time order: the first to fail is usually the cause.
    processes = list(dict.fromkeys(a.process for a in alerts if a.process))
    key = hashlib.sha256(",".join(sorted(a.key for a in alerts)).encode()).hexdigest()[:24]
    return Alert(
        kind="summary",
        host=alerts[0].host,
        time=min(a.time for a in alerts),
        count=sum(a.count for a in alerts),
        message=summary_text(list(items.values())),
        processes=tuple(processes),
        details={"items": list(items.values())},
        key=key,
    )


def summary_text(items: list[dict[str, Any]]) -> str:
    """A summary's body, one line per process and kind, in the order the items came (time
    order): count, when (ISO 8601, UTC) and, for exits, the latest exit status."""
    lines = []
    for it in items:
        target = info_name(it) if it["group"] or it["name"] else "(host)"
        what = f"resolved ({it['resolves']})" if it["kind"] == "resolved" else it["kind"]
        first, last = it.get("time"), it.get("last", it.get("time"))
        line = f"{target}: {what} x{it['count']}"
        if first is not None and last is not None and it["count"] > 1 and last != first:
            line += f" from {iso_time(first)} to {iso_time(last)}"
        elif first is not None:
            line += f" at {iso_time(first)}"
        if it.get("exit_status") is not None:
            line += f" (exit status {it['exit_status']})"
        lines.append(line)
    return "\n".join(lines)
