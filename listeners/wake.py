"""Wake supervisord's main loop so it hands buffered events to listeners without delay.

supervisord reaps a dead child and buffers its PROCESS_STATE_EXITED event in one pass of its
main loop, but gives buffered events to listeners only in the *next* pass, which starts after
``poll(timeout=1.0)``. On a quiet host nothing wakes that poll, so a crash reaches every listener
up to ~1 s late. Any request on supervisord's HTTP socket makes the poll return; a cheap one at a
steady interval bounds the wait by that interval. See docs/crashmail.md, *Latency*.

The poke runs on its own daemon thread, never on the event loop. When supervisord does not
answer, the interval doubles up to ``max_backoff`` and returns to normal on the next success.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from listeners.log import get_logger
from listeners.supervisor import Supervisor, SupervisorError

__all__ = ["DEFAULT_MAX_BACKOFF", "Waker", "connect_poke", "rpc_poke"]

log = get_logger("listeners.wake")

#: Longest wait between two pokes while supervisord does not answer.
DEFAULT_MAX_BACKOFF = 30.0


def connect_poke(url: str, timeout: float = 2.0) -> Callable[[], None]:
    """Connect to supervisord's socket and close at once: the cheapest wake measured.

    supervisord accepts the connection in one pass of its main loop (dispatching what is
    buffered in that same pass) and sees it closed in the next; nothing is logged below
    ``blather`` and no credentials are needed. ``url`` is ``unix:///path`` or ``http://host:port``.
    """
    if url.startswith("unix://"):
        path = url[len("unix://") :]

        def poke() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(path)

    else:
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 80)

        def poke() -> None:
            socket.create_connection(address, timeout).close()

    return poke


def rpc_poke(rpc: Supervisor) -> Callable[[], None]:
    """A wake by ``supervisor.getAPIVersion``; costs 2x a connect with 20 processes."""

    def poke() -> None:
        rpc.call("supervisor.getAPIVersion")

    return poke


class Waker:
    """Calls ``poke`` every ``interval`` seconds on a daemon thread; backs off on failures.

    ``step()`` does one poke and returns the seconds until the next, so tests drive the
    schedule without a thread or a clock.
    """

    def __init__(
        self,
        poke: Callable[[], None],
        interval: float,
        *,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        name: str = "wake",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"invalid wake interval {interval!r}: expected more than 0")
        self.poke = poke
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.name = name
        self.pokes = 0
        self.failures = 0
        self._delay = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        """Poke once; the delay before the next poke (doubled after each failure in a row)."""
        try:
            self.poke()
        except (SupervisorError, OSError) as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning(
                    "wake.failed",
                    error=str(exc),
                    hint="events may reach this listener up to 1 s late until supervisord"
                    " answers again",
                )
            self._delay = min(self._delay * 2, self.max_backoff)
            return self._delay
        self.pokes += 1
        if self.failures:
            log.info("wake.recovered", after_failures=self.failures)
            self.failures = 0
        self._delay = self.interval
        return self._delay

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                delay = self.step()
            except Exception:
                # A bug in the poke must not kill the thread silently and forever.
                log.exception("wake.poke_crashed")
                delay = self.max_backoff
