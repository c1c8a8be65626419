"""Non-blocking restarts: stop now, start again once supervisord says the process stopped.

``stopProcess(name, wait=True)`` blocks supervisord's answer until the process is gone, and a
listener that waits for it stops acknowledging events (the pool buffer overflows). Here the stop
is sent with wait=False from a worker thread, and the start follows the STOPPED/EXITED event.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from listeners.core.background import Submitter
from listeners.core.log import get_logger
from listeners.core.protocol import ProcessStateEvent
from listeners.core.supervisor import SupervisorError, SupervisorRPC

__all__ = [
    "MASS_MIN_PROCESSES",
    "MassGuard",
    "Overage",
    "RestartBudget",
    "Restarter",
    "looks_misconfigured",
    "restart_polling",
]

log = get_logger("listeners.restart")

_STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


class Restarter:
    """Restarts processes by name without ever blocking the caller."""

    def __init__(
        self,
        client: SupervisorRPC,
        worker: Submitter,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_after: float = 30.0,
    ) -> None:
        self.client = client
        self.worker = worker
        self.clock = clock
        # A stop whose STOPPED event we never see (lost event, listener restarted) is checked
        # with one getProcessInfo after this long.
        self.poll_after = poll_after
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def restart(self, name: str) -> bool:
        """Ask for a restart of ``group:name``; False if one is already under way."""
        with self._lock:
            if name in self._pending:
                return False
            self._pending[name] = self.clock()
        self.worker.submit(self._stop, name)
        return True

    def observe(self, event: ProcessStateEvent) -> None:
        """Feed every PROCESS_STATE event; starts a pending process once it has stopped."""
        name = event.full_name
        if event.state not in _STOPPED_STATES:
            return
        with self._lock:
            if self._pending.pop(name, None) is None:
                return
        self.worker.submit(self._start, name)

    def check(self) -> None:
        """Call now and then: polls restarts whose stop was never seen."""
        now = self.clock()
        with self._lock:
            stale = [n for n, t in self._pending.items() if now - t >= self.poll_after]
            for name in stale:
                self._pending[name] = now
        for name in stale:
            self.worker.submit(self._poll, name)

    def _forget(self, name: str) -> bool:
        with self._lock:
            return self._pending.pop(name, None) is not None

    def _stop(self, name: str) -> None:
        try:
            was_running = self.client.stop(name, wait=False)
        except SupervisorError as exc:
            self._forget(name)
            log.error("restart.stop_failed", process=name, error=str(exc))
            return
        log.info("restart.stop_sent", process=name, was_running=was_running)
        if not was_running and self._forget(name):
            self._start(name)

    def _start(self, name: str) -> None:
        try:
            self.client.start(name, wait=False)
        except SupervisorError as exc:
            log.error("restart.start_failed", process=name, error=str(exc))
            return
        log.info("restart.start_sent", process=name)

    def _poll(self, name: str) -> None:
        try:
            info = self.client.process_info(name)
        except SupervisorError as exc:
            self._forget(name)
            log.error("restart.poll_failed", process=name, error=str(exc))
            return
        if info.get("statename") in _STOPPED_STATES and self._forget(name):
            self._start(name)


def restart_polling(
    client: SupervisorRPC,
    name: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 600.0,
) -> None:
    """Stop, poll until stopped, start: for a listener that sees no PROCESS_STATE events.

    Polls rather than ``stop(wait=True)``: a stop may outlast the RPC timeout. Blocks; run it
    on a thread of its own. Raises SupervisorError.
    """
    client.stop(name, wait=False)
    deadline = clock() + timeout
    while clock() < deadline:
        if client.process_info(name).get("statename") in _STOPPED_STATES:
            break
        sleep(0.25)
    client.start(name, wait=False)


# --------------------------------------------------------------------------- safety rules


class RestartBudget:
    """At most ``allowed(size)`` distinct processes of a group restarted within ``window``
    seconds (Kubernetes' maxUnavailable). A group whose processes all leak at once is restarted
    a few at a time, so a bad ceiling never takes a whole group down together; one process
    restarted again is ``--max-restarts``' business, not this budget's.
    """

    def __init__(
        self,
        count: int = 0,
        share: float = 0.25,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = count
        self.share = share
        self.window = window
        self.clock = clock
        self._spent: dict[str, dict[str, float]] = {}  # group -> process -> last restart

    def allowed(self, size: int) -> int:
        """How many of a group of ``size`` may restart within one window (at least one)."""
        if self.count:
            return self.count
        return max(1, int(size * self.share))

    def in_window(self, group: str) -> dict[str, float]:
        now = self.clock()
        recent = {k: t for k, t in self._spent.get(group, {}).items() if now - t < self.window}
        if recent:
            self._spent[group] = recent
        else:
            self._spent.pop(group, None)
        return recent

    def take(self, group: str, size: int, process: str = "") -> bool:
        """Spend one restart of ``process`` in ``group`` (of ``size``); False when none is left."""
        recent = self.in_window(group)
        if process not in recent and len(recent) >= self.allowed(size):
            return False
        self._spent.setdefault(group, {})[process or f"#{len(recent)}"] = self.clock()
        return True

    def forget(self, group: str) -> None:
        self._spent.pop(group, None)

    def keep_only(self, groups: set[str]) -> None:
        """Forget every group not in ``groups`` (those supervisord no longer has)."""
        for group in set(self._spent) - groups:
            del self._spent[group]

    @property
    def label(self) -> str:
        amount = str(self.count) if self.count else f"{self.share * 100:g}%"
        return f"{amount} per {self.window:g}s"


#: A group this small is never held as a whole: one leaker of one or two is just a leak.
MASS_MIN_PROCESSES = 4


def looks_misconfigured(over: int, judged: int, *, most: float = 0.5) -> bool:
    """True when more than ``most`` of at least MASS_MIN_PROCESSES judged processes are over:
    that is a ceiling or a measure that does not fit the workload, not that many leaks."""
    return judged >= MASS_MIN_PROCESSES and over > judged * most


@dataclass(frozen=True)
class Overage:
    """A group held whole: ``over`` of ``judged`` over their limits, median use, lowest limit."""

    group: str
    over: int
    judged: int
    median_bytes: int
    limit_bytes: int


class MassGuard:
    """Holds every restart of a group while most of it is over its limit at once."""

    def __init__(self, most: float = 0.5) -> None:
        self.most = most
        self.held: set[str] = set()

    def check(
        self, rows: Mapping[str, Sequence[tuple[int, int]]]
    ) -> tuple[set[str], list[Overage], list[str]]:
        """``group -> [(measured, limit)]`` of one check -> (held now, newly held, resumed)."""
        held: set[str] = set()
        new: list[Overage] = []
        resumed: list[str] = []
        for group, pairs in rows.items():
            over = sum(1 for used, limit in pairs if used > limit)
            if not looks_misconfigured(over, len(pairs), most=self.most):
                if group in self.held:
                    self.held.discard(group)
                    resumed.append(group)
                continue
            held.add(group)
            if group not in self.held:
                self.held.add(group)
                median = int(statistics.median(used for used, _ in pairs))
                limit = min(limit for _, limit in pairs)
                new.append(Overage(group, over, len(pairs), median, limit))
        return held, new, resumed

    def forget(self, groups: Iterable[str]) -> None:
        self.held.difference_update(groups)
