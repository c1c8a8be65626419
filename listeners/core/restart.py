"""Non-blocking restarts: stop now, start again once supervisord says the process stopped.

``stopProcess(name, wait=True)`` blocks supervisord's answer until the process is gone, and a
listener that waits for it stops acknowledging events (the pool buffer overflows). Here the stop
is sent with wait=False from a worker thread, and the start follows the STOPPED/EXITED event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from listeners.core.background import Submitter
from listeners.core.log import get_logger
from listeners.core.protocol import ProcessStateEvent
from listeners.core.supervisor import Supervisor, SupervisorError

__all__ = ["Restarter"]

log = get_logger("listeners.restart")

_STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


class Restarter:
    """Restarts processes by name without ever blocking the caller."""

    def __init__(
        self,
        client: Supervisor,
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
