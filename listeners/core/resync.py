"""When a listener re-reads supervisord's process table: one policy for every tool.

Events keep a listener's view of the processes current, but the view starts empty and events
can go astray: supervisord drops them when a listener's buffer overflows (a poolserial gap), a
listener may subscribe without PROCESS_STATE, a group is added under it. Every tool answers
this with getAllProcessInfo; ``Resync`` decides when, the same way for all of them:

- the **seed**: the first read, before anything else;
- a read **wanted** for a reason (events lost, a group added, no state events at all), once the
  reason is ``settle`` seconds old (a storm of lost events is read once, after it) and at least
  ``spacing`` seconds after the previous read (bounded RPC load);
- a **safety** read every ``safety`` seconds, in case an event went astray unnoticed.

Reads never overlap: ``take`` hands out one read at a time and ``done`` ends it. A reason given
while a read runs is kept for the next read (that read may have looked before the change); a
read that failed keeps its reasons (a failed seed stays the seed), so it is tried again after
``spacing`` or ``RETRY_AFTER``, whichever is longer. The caller performs
the read wherever it must not block (a worker thread); ``Resync`` is safe across threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RETRY_AFTER", "Resync"]

#: Seconds before a read that failed (supervisord unreachable) is tried again, at the least.
RETRY_AFTER = 1.0


class Resync:
    """The reconcile policy of one listener; see the module docstring."""

    def __init__(
        self,
        *,
        settle: float = 0.0,
        spacing: float = 0.0,
        safety: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle = settle
        self.spacing = spacing
        self.safety = safety
        self.clock = clock
        self._wanted: dict[str, float] = {}  # reason -> when it was first given
        self._began: float | None = None  # a read runs since then
        self._last: float | None = None  # when the last good read ended (None: seed due)
        self._failed: float | None = None  # when the last read failed, if it did
        self._lock = threading.Lock()

    def want(self, why: str) -> None:
        """Ask for a read for ``why``; asking again for the same reason keeps the first time."""
        with self._lock:
            self._wanted.setdefault(why, self.clock())

    @property
    def running(self) -> bool:
        with self._lock:
            return self._began is not None

    @property
    def seeded(self) -> bool:
        with self._lock:
            return self._last is not None

    def wanted(self) -> list[str]:
        """The reasons waiting for a read, oldest first."""
        with self._lock:
            return sorted(self._wanted, key=self._wanted.__getitem__)

    def _due(self, now: float) -> str | None:
        if self._began is not None:
            return None
        if self._failed is not None and now - self._failed < max(self.spacing, RETRY_AFTER):
            return None
        if self._last is None:
            return "seed"
        if self.safety is not None and now - self._last >= self.safety:
            return "safety"
        if self._wanted and now - self._last >= self.spacing:
            why, since = min(self._wanted.items(), key=lambda kv: kv[1])
            if now - since >= self.settle:
                return why
        return None

    def due(self) -> str | None:
        """Why a read is due now (``seed``, ``safety`` or a wanted reason), or None."""
        with self._lock:
            return self._due(self.clock())

    def take(self) -> str | None:
        """Like ``due``, and when a read is due, mark it begun: the caller must then read and
        call ``done``. Two callers never both get a read."""
        with self._lock:
            now = self.clock()
            why = self._due(now)
            if why is not None:
                self._began = now
            return why

    def begin(self) -> None:
        """Mark a read begun that the caller does anyway (the seed a tool reads before its
        event loop starts)."""
        with self._lock:
            self._began = self.clock()

    def done(self, ok: bool = True) -> None:
        """The read begun by ``take`` or ``begin`` ended; when it worked, the reasons given
        before it began are answered."""
        with self._lock:
            now = self.clock()
            began = self._began if self._began is not None else now
            self._began = None
            if ok:
                self._last, self._failed = now, None
                self._wanted = {w: t for w, t in self._wanted.items() if t > began}
            else:
                self._failed = now
