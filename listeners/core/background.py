"""A worker thread for the slow work a listener must keep off its event loop."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from listeners.core.log import get_logger

__all__ = ["Submitter", "Worker"]

log = get_logger("listeners.background")

_STOP = object()


class Submitter(Protocol):
    """Where a listener sends slow work: a Worker, or tests' InlineWorker that runs it at once."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None: ...
    def close(self, timeout: float = 10.0) -> None: ...


class Worker:
    """Runs submitted calls one at a time, in order, on a daemon thread.

    A call that raises is logged and forgotten: the caller decides about retries.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def pending(self) -> int:
        return self._queue.qsize()

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has run; False on timeout."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception(
                    "background.call_failed",
                    worker=self.name,
                    call=getattr(fn, "__name__", repr(fn)),
                )
