"""The exporter's short memory: memory samples over the last hour and recent events, per process.

Bounded ring buffers (a deque per process with a ``maxlen``), so 1,000 workers cost a few MB at
most and nothing grows with uptime. The status page's per-process view draws its chart and its
event list from here; Prometheus keeps the long history.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Event", "History", "Sample"]

#: One hour of samples at the default step.
DEFAULT_SPAN = 3600.0
DEFAULT_STEP = 15.0
DEFAULT_EVENTS = 50


class Sample(NamedTuple):
    at: float
    memory_bytes: int


class Event(NamedTuple):
    """Something that happened to a process; ``kind`` is a short word, ``text`` says the rest."""

    at: float
    kind: str
    text: str


class History:
    """Memory samples and recent events by ``group:name``; thread-safe."""

    def __init__(
        self,
        *,
        span: float = DEFAULT_SPAN,
        step: float = DEFAULT_STEP,
        events: int = DEFAULT_EVENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.span = span
        self.step = step
        self.clock = clock
        self._samples_max = max(2, int(span / step) + 1)
        self._events_max = events
        self._lock = threading.Lock()
        self._samples: dict[str, deque[Sample]] = {}
        self._events: dict[str, deque[Event]] = {}

    def add_samples(self, memory: dict[str, int], at: float | None = None) -> None:
        """Record one sample per process (``group:name`` -> bytes), all at the same time."""
        when = self.clock() if at is None else at
        with self._lock:
            for name, value in memory.items():
                ring = self._samples.get(name)
                if ring is None:
                    ring = self._samples[name] = deque(maxlen=self._samples_max)
                ring.append(Sample(when, value))

    def record(self, name: str, kind: str, text: str, at: float | None = None) -> None:
        when = self.clock() if at is None else at
        with self._lock:
            ring = self._events.get(name)
            if ring is None:
                ring = self._events[name] = deque(maxlen=self._events_max)
            ring.append(Event(when, kind, text))

    def samples(self, name: str, now: float | None = None) -> list[Sample]:
        """Samples of the last ``span`` seconds, oldest first."""
        cutoff = (self.clock() if now is None else now) - self.span
        with self._lock:
            return [s for s in self._samples.get(name, ()) if s.at >= cutoff]

    def events(self, name: str) -> list[Event]:
        """Recent events, newest first."""
        with self._lock:
            return list(reversed(self._events.get(name, ())))

    def forget(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self._samples.pop(name, None)
                self._events.pop(name, None)
