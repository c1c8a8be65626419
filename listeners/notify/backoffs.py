"""health's backoff holds, remembered so that a crash alert says when the next start is.

supervisor-health publishes a ``bus.Backoff`` each time it holds a crash-looping process. It is
no alert of its own (one per crash would flood); crashmail keeps the latest one per process and
the courier adds "next start in 40 s" to that process's crash, crash-loop and FATAL alerts as it
composes them. health hears of a crash in the same dispatch as crashmail, so its message
usually arrives just after the crash event: an alert of a process health is known to hold waits
up to ``WAIT`` seconds for it (``due``) instead of going out without it.

Written by the event thread, read by the courier's: every method takes the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from listeners.core import bus
from listeners.core.names import full_name, group_of
from listeners.notify.alert import Alert, iso_time

__all__ = ["KINDS", "MAX_HOLDS", "STALE", "WAIT", "BackoffMemory", "hold_sentence"]

#: The alert kinds that carry the next start.
KINDS = ("crash", "crash_loop", "fatal", "backoff")
#: Seconds an alert of a process health holds waits for health's message about this failure.
WAIT = 2.0
#: Seconds past its next start after which a hold no newer message replaced is forgotten.
STALE = 3600.0
#: Holds kept at most (the oldest heard goes first): a bound for a host of many processes.
MAX_HOLDS = 4096


@dataclass
class _Held:
    msg: bus.Backoff
    running_since: float | None = None


def hold_sentence(msg: bus.Backoff, at: float) -> str:
    """'supervisor-health holds it after 3 failures in a row: next start in 40 s (...Z).'"""
    left = msg.next_start - at
    when = f"in {left:.0f} s" if left >= 1 else "in under a second"
    after = f" after {msg.failures} failures in a row" if msg.failures > 1 else ""
    return f"supervisor-health holds it{after}: next start {when} ({iso_time(msg.next_start)})."


class BackoffMemory:
    """The latest ``bus.Backoff`` by ``group:name``, until it is stale, the process has run for
    ``stable`` seconds, or its group is removed."""

    def __init__(
        self,
        *,
        stable: float,
        stale: float = STALE,
        limit: int = MAX_HOLDS,
        wait: float = WAIT,
    ) -> None:
        self.stable = stable
        self.stale = stale
        self.limit = limit
        self.wait = wait
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def heard(self, msg: bus.Backoff) -> None:
        """health holds ``msg``'s process: remember this hold in place of any older one."""
        key = full_name(msg.group, msg.name)
        with self._lock:
            self._held.pop(key, None)
            self._held[key] = _Held(msg)
            while len(self._held) > self.limit:
                del self._held[next(iter(self._held))]

    def observe(self, process: str, state: str, now: float) -> None:
        """A state change: RUNNING starts the stable clock, anything else stops it."""
        with self._lock:
            held = self._held.get(process)
            if held is not None and (state != "RUNNING" or held.running_since is None):
                held.running_since = now if state == "RUNNING" else None

    def prune(self, now: float) -> int:
        """Forget holds of processes stable for ``stable`` seconds, or stale; returns how many."""
        with self._lock:
            gone = [
                k
                for k, h in self._held.items()
                if (h.running_since is not None and now - h.running_since >= self.stable)
                or now - h.msg.next_start >= self.stale
            ]
            for key in gone:
                del self._held[key]
        return len(gone)

    def forget_group(self, group: str) -> int:
        """The group was removed from supervisord: its holds go; returns how many."""
        with self._lock:
            gone = [k for k in self._held if group_of(k) == group]
            for key in gone:
                del self._held[key]
        return len(gone)

    def current(self, process: str, at: float) -> bus.Backoff | None:
        """The hold whose next start is after ``at`` (the one for a failure at ``at``)."""
        with self._lock:
            held = self._held.get(process)
        if held is None or held.msg.next_start <= at:
            return None
        return held.msg

    def due(self, alert: Alert, due: float) -> float:
        """When ``alert`` may be composed: one of a process health holds waits for the hold."""
        if alert.kind not in KINDS or not alert.process:
            return due
        with self._lock:
            known = alert.process in self._held
        if not known or self.current(alert.process, alert.time) is not None:
            return due
        return max(due, alert.time + self.wait)

    def attach(self, alert: Alert) -> Alert:
        """``alert`` with health's hold: the sentence in its text, and in ``details``
        ``next_start`` (ISO 8601), ``backoff_seconds`` (health's delay) and ``backoff_failures``."""
        if alert.kind not in KINDS or not alert.process or "next_start" in alert.details:
            return alert
        msg = self.current(alert.process, alert.time)
        if msg is None:
            return alert
        sentence = hold_sentence(msg, alert.time)
        return replace(
            alert,
            message=f"{alert.message}\n\n{sentence}" if alert.message else sentence,
            details={
                **alert.details,
                "next_start": iso_time(msg.next_start),
                "backoff_seconds": msg.delay_seconds,
                "backoff_failures": msg.failures,
            },
        )
