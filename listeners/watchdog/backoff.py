"""Restart backoff: delays that double from a base to a cap, reset after a stable run.

supervisord respawns a process that crashed after ``startsecs`` at once, forever, and gives one
that crashes sooner a few quick tries before FATAL for good (supervisor#487). ``Schedule`` is
the rule, like Kubernetes' CrashLoopBackOff: the n-th crash in a row waits
``min(cap, base * 2**(n-1))``; a run of ``reset_after`` seconds forgets the crashes.
``BackoffBook`` keeps each process's count and next start, on wall-clock time so that it can be
saved to a small JSON file and survive a restart of the listener.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass

from listeners.core.log import get_logger

__all__ = ["BackoffBook", "Hold", "Schedule"]

log = get_logger("listeners.watchdog.backoff")


@dataclass(frozen=True)
class Schedule:
    base: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(
                f"backoff needs 0 < base <= cap, got base {self.base:g} s, cap {self.cap:g} s"
            )

    def delay(self, failures: int) -> float:
        """The wait before the next start after ``failures`` crashes in a row (>= 1)."""
        if failures <= 0:
            return 0.0
        # cap the exponent: 2**1000 is a float overflow, and the cap is reached long before
        return min(self.cap, self.base * 2.0 ** min(failures - 1, 64))


@dataclass
class Hold:
    """One process's backoff: crashes in a row, when it last began a run, its next start."""

    failures: int = 0
    running_since: float | None = None
    next_start: float | None = None
    delay: float = 0.0


class BackoffBook:
    """Backoff state by ``group:name``; every change is written to ``path`` when one is given."""

    def __init__(self, schedule: Schedule, path: str | None = None) -> None:
        self.schedule = schedule
        self.path = path
        self.holds: dict[str, Hold] = {}
        #: why the last write of ``path`` failed (None: the file holds what memory holds)
        self.write_error: str | None = None
        if path:
            self._load(path)

    def running(self, name: str, now: float) -> None:
        """The process reached RUNNING at ``now``."""
        hold = self.holds.setdefault(name, Hold())
        hold.running_since = now
        hold.next_start = None
        self._save()

    def stable(self, name: str, now: float, schedule: Schedule | None = None) -> bool:
        """True (and the count is reset) when the current run has lasted ``reset_after``."""
        hold = self.holds.get(name)
        if hold is None or hold.running_since is None or hold.failures == 0:
            return False
        if now - hold.running_since < (schedule or self.schedule).reset_after:
            return False
        hold.failures = 0
        hold.delay = 0.0
        self._save()
        return True

    def failed(self, name: str, now: float, schedule: Schedule | None = None) -> Hold:
        """The process crashed (or went FATAL) at ``now``: count it and set the next start."""
        rule = schedule or self.schedule
        hold = self.holds.setdefault(name, Hold())
        if hold.running_since is not None and now - hold.running_since >= rule.reset_after:
            hold.failures = 0
        hold.running_since = None
        hold.failures += 1
        hold.delay = rule.delay(hold.failures)
        hold.next_start = now + hold.delay
        self._save()
        return hold

    def held(self, name: str, now: float) -> bool:
        """True while the process waits for its next start."""
        hold = self.holds.get(name)
        return hold is not None and hold.next_start is not None and now < hold.next_start

    def due(self, now: float) -> list[str]:
        """Processes whose wait is over; each is returned once (its next start is cleared)."""
        names = [
            n for n, h in self.holds.items() if h.next_start is not None and h.next_start <= now
        ]
        for name in names:
            self.holds[name].next_start = None
        if names:
            self._save()
        return names

    def retry(self, name: str, at: float) -> None:
        """The start after the hold failed (supervisord unreachable): hold again until ``at``."""
        hold = self.holds.get(name)
        if hold is not None:
            hold.next_start = at
            self._save()

    def forget(self, name: str) -> None:
        if self.holds.pop(name, None) is not None:
            self._save()

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # a damaged file only loses the counts: start afresh, and say so
            log.warning(
                "health.state_unreadable",
                path=path,
                error=str(exc),
                hint="the backoff counts start afresh; the file is rewritten at the next change",
            )
            return
        if not isinstance(data, dict):
            return
        for name, fields in data.get("holds", {}).items():
            with contextlib.suppress(TypeError, ValueError):
                self.holds[str(name)] = Hold(
                    failures=int(fields.get("failures", 0)),
                    running_since=_opt_float(fields.get("running_since")),
                    next_start=_opt_float(fields.get("next_start")),
                    delay=float(fields.get("delay", 0.0)),
                )

    def _save(self) -> None:
        """Write the holds; a failure (full disk, unwritable directory) is logged once, the
        holds stay in memory and the next change tries again. Never raises: a backoff held in
        memory is better than a listener that dies on every event until the disk has room."""
        if not self.path:
            return
        body = {"v": 1, "holds": {n: asdict(h) for n, h in self.holds.items()}}
        directory = os.path.dirname(self.path) or "."
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".backoff-", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if self.write_error is None:
                log.error(
                    "health.state_write_failed",
                    path=self.path,
                    error=str(exc),
                    holds=len(self.holds),
                    hint="backoff goes on from memory but a restart of supervisor-health"
                    " forgets it; free disk space or fix --state-dir",
                )
            self.write_error = str(exc)
            return
        if self.write_error is not None:
            log.warning("health.state_written", path=self.path, holds=len(self.holds))
            self.write_error = None


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
