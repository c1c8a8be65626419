"""Cut off a call that overruns its deadline by shutting down the sockets it opened.

A socket timeout bounds one read, not a whole exchange: a receiver that answers one byte every
few seconds, or never finishes its greeting, keeps a send (requests, smtplib) inside its library
for good. A thread cannot be killed, but its sockets can be shut down from another thread: the
blocked read then returns at once with an error and the call unwinds by itself.

Which sockets does a call own? The libraries hide them (urllib3 keeps its connection inside its
pool while a request runs; smtplib makes its socket inside its constructor; TLS wraps the plain
socket in a new object). CPython raises the audit event ``socket.__new__`` for every socket
object it makes, TLS ones included, in the thread that makes it: an audit hook that records
them for the threads that asked, and nothing else, is the one place that sees them all.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CutoffCall", "Watched"]

_local = threading.local()
_install_lock = threading.Lock()
_installed: list[bool] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audit event of the process: keep the common path to two comparisons.
    if event == "socket.__new__":
        watched: Watched | None = getattr(_local, "watched", None)
        if watched is not None:
            watched.opened.append(args[0])
    elif event == "socket.connect":
        watched = getattr(_local, "watched", None)
        if watched is not None and watched.cut:
            # A library that catches the error of the socket shut under it and carries on
            # (requests following a redirect it was reading) gets no new connection: an
            # exception raised by an audit hook aborts the operation.
            raise ConnectionAbortedError("the call was cut off at its deadline")


def _install() -> None:
    with _install_lock:
        if not _installed:
            sys.addaudithook(_hook)  # hooks cannot be removed: installed once per process
            _installed.append(True)


class Watched:
    """The sockets one call made, in the thread that runs it, so another thread can cut them."""

    def __init__(self) -> None:
        _install()
        self.opened: list[socket.socket] = []
        #: Set by cut_off: the call may open no new connection from then on.
        self.cut = False

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` here, recording every socket it makes; forget them when it returns."""
        _local.watched = self
        try:
            fn()
        finally:
            _local.watched = None
            self.opened = []

    def cut_off(self) -> int:
        """Shut down every socket the call still has open, and refuse it new connections;
        returns how many were shut."""
        self.cut = True
        shut = 0
        for sock in list(self.opened):
            if sock.fileno() == -1:  # closed, or handed over to a TLS socket (recorded too)
                continue
            try:
                # The plain socket's shutdown: SSLSocket.shutdown would also drop its TLS state
                # under the reader's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                continue
            shut += 1
        return shut


class CutoffCall:
    """``fn`` run in a daemon thread of its own for at most a deadline, then cut off."""

    def __init__(self, fn: Callable[[], None], name: str = "cutoff-call") -> None:
        self._fn = fn
        self._watched = Watched()
        self._outcome: list[BaseException | None] = []
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    def _body(self) -> None:
        try:
            self._watched.run(self._fn)
        except BaseException as exc:  # handed to the calling thread in run()
            self._outcome.append(exc)
        else:
            self._outcome.append(None)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def run(self, deadline: float, grace: float = 2.0) -> bool:
        """True when ``fn`` finished within ``deadline`` seconds (its exception is raised here).

        False when it did not: the sockets it opened are shut down and it gets ``grace`` more
        seconds to unwind. A call stuck outside a socket (a disk write) may still be running
        then: ``alive`` says so.
        """
        self.thread.start()
        self.thread.join(deadline)
        if self.thread.is_alive():
            self._watched.cut_off()
            self.thread.join(grace)
            return False
        if self._outcome and self._outcome[0] is not None:
            raise self._outcome[0]
        return True
