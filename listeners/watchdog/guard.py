"""Safety rules in front of a restart: startup grace, restarts per process, a mass guard.

A listener that restarts on a signal it cannot fully trust (a probe, a memory reading) must not
make an outage worse: a process that has just started is left alone, one that keeps failing
after ``count`` restarts in a window is only reported, and when many processes fail at once
(the database they share went away) restarting them all helps nothing, so the mass guard stops
every restart until the window has passed.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["RestartGuard"]


class RestartGuard:
    """Decides whether a restart may go ahead; ``allow`` records the ones it lets through."""

    def __init__(
        self,
        *,
        grace: float = 0.0,
        per_process: tuple[int, float] | None = None,
        mass: tuple[int, float] | None = None,
    ) -> None:
        self.grace = grace
        self.per_process = per_process
        self.mass = mass
        self._by_name: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self, name: str, now: float, running_since: float | None) -> str:
        """'restart' when allowed (and counted), else why not: grace, exhausted or guarded."""
        with self._lock:
            if running_since is not None and now - running_since < self.grace:
                return "grace"
            mine = self._by_name.setdefault(name, deque())
            if self.per_process is not None:
                count, window = self.per_process
                _expire(mine, now, window)
                if len(mine) >= count:
                    return "exhausted"
            if self.mass is not None:
                count, window = self.mass
                _expire(self._all, now, window)
                if len(self._all) >= count:
                    return "guarded"
            mine.append(now)
            self._all.append(now)
            return "restart"


def _expire(times: deque[float], now: float, window: float) -> None:
    while times and now - times[0] >= window:
        times.popleft()
