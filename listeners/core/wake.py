"""Wake supervisord's main loop so it hands buffered events to listeners without delay.

supervisord reaps a dead child and buffers its PROCESS_STATE_EXITED event in one pass of its
main loop, but gives buffered events to listeners only in the *next* pass, which starts after
``poll(timeout=1.0)``. On a quiet host nothing wakes that poll, so a crash reaches every listener
up to ~1 s late. Any request on supervisord's HTTP socket makes the poll return; a cheap one at a
steady interval bounds the wait by that interval. See docs/crashmail.md, *Latency*.

Two ways to time the poke, each on its own daemon thread, never on the event loop:

* ``DeathWatch`` (``--wake exit``) holds a Linux pidfd for every watched process and pokes only
  when one of them exits, so it costs supervisord nothing while nothing dies.
* ``Waker`` (``--wake interval``) pokes at a steady interval; when supervisord does not answer,
  the interval doubles up to ``max_backoff`` and returns to normal on the next success. It is
  the fallback where pidfds are unavailable (kernel before 5.3, a seccomp filter).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from listeners.core.log import get_logger
from listeners.core.supervisor import Connection, SupervisorError, SupervisorRPC
from listeners.core.units import parse_duration

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_PIDFDS",
    "DEFAULT_REPOKE",
    "MIN_WAKE_INTERVAL",
    "DeathWatch",
    "Waker",
    "connect_poke",
    "make_waker",
    "parse_wake_interval",
    "pidfd_unavailable",
    "raise_fd_limit",
    "rpc_poke",
]

log = get_logger("listeners.wake")

#: Longest wait between two pokes while supervisord does not answer.
DEFAULT_MAX_BACKOFF = 30.0
#: Seconds after a death-triggered poke before a second one (see DeathWatch); 0 = none.
DEFAULT_REPOKE = 0.05
#: Most processes a DeathWatch holds a pidfd for; more are left to supervisord's 1 s poll.
DEFAULT_MAX_PIDFDS = 4096


#: Shortest wake interval accepted: below it supervisord's CPU cost grows for little gain.
MIN_WAKE_INTERVAL = 0.05


def parse_wake_interval(text: str) -> float:
    """``0`` (off), ``200ms``, ``0.2``, ``0.2s``; at least MIN_WAKE_INTERVAL unless off."""
    stripped = text.strip()
    forms = "0 (off), or a duration of at least 50ms such as 200ms, 0.2 or 0.2s"
    try:
        value = parse_duration(stripped)
    except ValueError:
        raise ValueError(f"invalid wake interval {text!r}: expected {forms}") from None
    if value != 0 and value < MIN_WAKE_INTERVAL:
        raise ValueError(f"invalid wake interval {text!r}: expected {forms}")
    return value


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


def rpc_poke(rpc: SupervisorRPC) -> Callable[[], None]:
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


PidfdOpen = Callable[[int], int]


def pidfd_unavailable(pidfd_open: PidfdOpen | None = None) -> str | None:
    """None when pidfds work here, else why not (for the log): opens one for this process."""
    opener = pidfd_open if pidfd_open is not None else getattr(os, "pidfd_open", None)
    if opener is None:
        return "os.pidfd_open is missing (it needs Linux)"
    try:
        fd = opener(os.getpid())
    except OSError as exc:
        # ENOSYS: kernel before 5.3; EPERM: a seccomp filter (older container runtimes).
        return f"pidfd_open failed: {exc}"
    os.close(fd)
    return None


def raise_fd_limit(need: int) -> int:
    """Lift the soft RLIMIT_NOFILE towards ``need`` (never above the hard limit); the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return need
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


class DeathWatch:
    """Pokes supervisord as soon as a watched process exits, using one pidfd per process.

    supervisord buffers a child's EXITED event in the loop pass that reaps it and hands it
    over in the next pass, which a quiet supervisord starts only after ``poll(1.0)``. A pidfd
    turns readable when its process exits; the poke (connect + close) then wakes supervisord
    twice: the accept in one pass, the EOF of the closed connection in the next. When the
    accept lands in a pass that ran before the reap (the child's pipes close before it becomes
    reapable), the EOF pass reaps and the event would wait again; the second poke
    ``repoke`` seconds later covers that case.

    ``watch({name: pid})`` may be called from any thread with the full current map; the thread
    opens pidfds for new pids and closes the ones of pids that left the map. A pid that cannot
    be opened because it is already gone counts as a death. ``check()`` runs one round of the
    thread's loop, so tests drive it without the thread.
    """

    def __init__(
        self,
        poke: Callable[[], None],
        *,
        repoke: float = DEFAULT_REPOKE,
        max_fds: int = DEFAULT_MAX_PIDFDS,
        pidfd_open: PidfdOpen | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "wake-exit",
    ) -> None:
        self.poke = poke
        self.repoke = repoke
        self.max_fds = max_fds
        self.name = name
        self.clock = clock
        self._open: PidfdOpen = pidfd_open if pidfd_open is not None else os.pidfd_open
        self.pokes = 0
        self.deaths = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}
        self._held: dict[str, tuple[int, int]] = {}  # name -> (pid, fd); the thread's own
        self._names: dict[int, str] = {}  # fd -> name
        self._dead: set[tuple[str, int]] = set()  # seen exiting; never reopened
        self._repoke_at: float | None = None
        self._warned: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._poll = select.poll()
        self._poll.register(self._rfd, select.POLLIN)

    # ---------------------------------------------------------------- any thread

    def watch(self, pids: Mapping[str, int]) -> None:
        """The processes to watch now, ``{name: pid}``; cheap when nothing changed."""
        wanted = dict(pids)
        with self._lock:
            if wanted == self._wanted:
                return
            self._wanted = wanted
        self._interrupt()

    def held(self) -> dict[str, int]:
        """``{name: pid}`` of the pidfds open now (read it from the watch thread or in tests)."""
        return {name: pid for name, (pid, _) in self._held.items()}

    def _interrupt(self) -> None:
        # A full pipe already interrupts; a closed one (-1) means stopped.
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"x")

    # ---------------------------------------------------------------- the watch thread

    def check(self, timeout: float | None = None) -> int:
        """One round: wait up to ``timeout`` s for deaths or a new map; poke; deaths seen."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        died = 0
        resync = False
        for fd, _ in self._poll.poll(ms):
            if fd == self._rfd:
                resync = True
                self._drain()
            elif fd in self._names:
                # POLLIN: the process has exited (a zombie or reaped); its fd has done its job.
                name = self._names[fd]
                pid = self._held[name][0]
                self._close(name)
                self._dead.add((name, pid))
                died += 1
        if resync:
            died += self.sync()
        now = self.clock()
        if died:
            self.deaths += died
            self._poke()
            self._repoke_at = now + self.repoke if self.repoke > 0 else None
        elif self._repoke_at is not None and now >= self._repoke_at:
            self._repoke_at = None
            self._poke()
        return died

    def sync(self) -> int:
        """Open pidfds for the wanted pids, close the others; pids already gone count as deaths."""
        with self._lock:
            wanted = dict(self._wanted)
        for name, (pid, _) in list(self._held.items()):
            if wanted.get(name) != pid:
                self._close(name)
        self._dead &= set(wanted.items())
        gone = 0
        for name, pid in wanted.items():
            if name in self._held or (name, pid) in self._dead:
                continue
            if len(self._held) >= self.max_fds:
                self._warn_once(
                    "wake.watch_limit",
                    limit=self.max_fds,
                    hint="crashes of the processes past the limit reach listeners up to 1 s late",
                )
                break
            try:
                fd = self._open(pid)
            except ProcessLookupError:
                self._dead.add((name, pid))
                gone += 1
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._warn_once(
                        "wake.fd_limit",
                        error=str(exc),
                        watched=len(self._held),
                        hint="raise the listener's open-files limit (ulimit -n)",
                    )
                    break
                self._warn_once("wake.pidfd_failed", error=str(exc), pid=pid, process=name)
                continue
            self._held[name] = (pid, fd)
            self._names[fd] = name
            self._poll.register(fd, select.POLLIN)
        return gone

    def _close(self, name: str) -> None:
        _, fd = self._held.pop(name)
        del self._names[fd]
        self._poll.unregister(fd)
        os.close(fd)

    def _drain(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def _warn_once(self, event: str, **kw: object) -> None:
        if event not in self._warned:
            self._warned.add(event)
            log.warning(event, **kw)

    def _poke(self) -> None:
        try:
            self.poke()
        except (SupervisorError, OSError) as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("wake.failed", error=str(exc))
            return
        self.pokes += 1
        if self.failures:
            log.info("wake.recovered", after_failures=self.failures)
            self.failures = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread, then close every pidfd and the pipe."""
        self._stopping = True
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # leave the fds to the process exit rather than close them under it
        for name in list(self._held):
            self._close(name)
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._rfd = self._wfd = -1

    def _run(self) -> None:
        while not self._stopping:
            at = self._repoke_at
            try:
                self.check(None if at is None else max(0.0, at - self.clock()))
            except Exception:
                # A bug here must not end the watch silently; a short pause avoids a hot loop.
                log.exception("wake.watch_crashed")
                time.sleep(1.0)


def make_waker(
    mode: str,
    interval: float,
    connection: Connection,
    tool: str,
    *,
    pidfd_open: Callable[[int], int] | None = None,
) -> Waker | DeathWatch | None:
    """The wake thread for a ``--wake`` mode (None when off): a bare connect to supervisord,
    made when a watched process exits (``exit``), or every ``interval`` (``interval``, and
    the fallback of ``exit`` where pidfds are unavailable). Logged as ``TOOL.wake``."""
    if mode == "off":
        log.info(f"{tool}.wake", mode="off")
        return None
    poke = connect_poke(connection.url, timeout=min(connection.timeout, 2.0))
    if mode == "exit":
        why = pidfd_unavailable(pidfd_open)
        if why is None:
            log.info(f"{tool}.wake", mode="exit")
            return DeathWatch(poke, pidfd_open=pidfd_open, name=f"{tool}-wake")
        fallback = "interval" if interval > 0 else "off"
        log.warning(f"{tool}.wake_fallback", wanted="exit", mode=fallback, reason=why)
        if fallback == "off":
            return None
    log.info(f"{tool}.wake", mode="interval", interval=interval)
    return Waker(poke, interval, name=f"{tool}-wake")
