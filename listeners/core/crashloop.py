"""The crash-loop rule, shared by crashmail (alerts) and the exporter (a 0/1 series).

A crash loop often never reaches FATAL: a process that dies after ``startsecs`` goes
EXITED -> STARTING -> RUNNING forever because supervisord resets its backoff counter on
RUNNING. So the rule counts unexpected exits (EXITED expected:0) and BACKOFF transitions
(death before startsecs) over a sliding window, and calls the loop over once the process has
stayed RUNNING for a whole window. FATAL ends a loop without a change: supervisord stopped
restarting the process, and FATAL is a state of its own (its own alert, its own series).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from listeners.core.protocol import ProcessStateEvent

__all__ = ["DEFAULT_LOOP", "CrashLoopDetector", "LoopChange"]

#: ``--loop`` default: 3 unexpected exits within 5 minutes.
DEFAULT_LOOP = (3, 300.0)


@dataclass(frozen=True)
class LoopChange:
    """A process entered (``looping=True``) or left a crash loop."""

    name: str
    looping: bool
    exits: int


@dataclass
class _Track:
    exits: deque[float] = field(default_factory=deque)
    looping: bool = False
    running_since: float | None = None
    total_in_loop: int = 0


class CrashLoopDetector:
    """Feed PROCESS_STATE events to ``observe``; call ``check`` now and then to resolve loops."""

    def __init__(
        self,
        threshold: int = DEFAULT_LOOP[0],
        window: float = DEFAULT_LOOP[1],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or window <= 0:
            raise ValueError("crash-loop threshold and window must be greater than zero")
        self.threshold = threshold
        self.window = window
        self.clock = clock
        self._tracks: dict[str, _Track] = {}

    def looping(self) -> set[str]:
        return {name for name, t in self._tracks.items() if t.looping}

    def forget(self, name: str) -> None:
        self._tracks.pop(name, None)

    def forget_group(self, group: str) -> int:
        """The group was removed from supervisord: its processes' tracks go; returns how many."""
        gone = [n for n in self._tracks if n.partition(":")[0] == group]
        for name in gone:
            del self._tracks[name]
        return len(gone)

    def _prune(self, track: _Track, now: float) -> None:
        while track.exits and now - track.exits[0] > self.window:
            track.exits.popleft()

    def observe(self, event: ProcessStateEvent) -> LoopChange | None:
        """Returns a change when this event starts (or, on STOPPED, ends) a loop."""
        name = event.full_name
        now = self.clock()
        track = self._tracks.setdefault(name, _Track())
        state = event.state
        if state == "RUNNING":
            track.running_since = now
            return None
        if state in ("EXITED", "BACKOFF") and not (state == "EXITED" and event.expected):
            track.running_since = None
            track.exits.append(now)
            self._prune(track, now)
            if track.looping:
                track.total_in_loop += 1
                return None
            if len(track.exits) >= self.threshold:
                track.looping = True
                track.total_in_loop = len(track.exits)
                return LoopChange(name, True, len(track.exits))
            return None
        if state == "STOPPED" and track.looping:
            # Stopped on purpose (supervisorctl stop, memmon, tasks disable): the loop is over.
            track.looping = False
            track.exits.clear()
            return LoopChange(name, False, track.total_in_loop)
        if state == "FATAL":
            # supervisord gave up: the process no longer restarts, so it no longer loops. FATAL
            # is reported on its own; the loop simply ends, with no "stable again" message.
            track.looping = False
            track.exits.clear()
        if state in ("STOPPING", "STOPPED", "FATAL", "UNKNOWN"):
            track.running_since = None
        return None

    def check(self) -> list[LoopChange]:
        """Loops whose process has now been RUNNING for a whole window are resolved."""
        now = self.clock()
        resolved = []
        for name, track in self._tracks.items():
            since = track.running_since
            if track.looping and since is not None and now - since >= self.window:
                track.looping = False
                track.exits.clear()
                resolved.append(LoopChange(name, False, track.total_in_loop))
        return resolved
