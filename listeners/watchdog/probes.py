"""Liveness probes (HTTP, TCP connect, a command) and a pool that runs them off the event loop.

A probe is a frozen description; ``run_probe`` performs it once and never raises. A probe's
timeout is a deadline for the whole probe (connect, TLS, request, the answer), so a target that
trickles its answer a byte at a time fails at the deadline like one that never answers.
``ProbePool`` runs probes on a few threads so that a probe that hangs until its deadline holds
up neither the event loop nor the other probes, and never runs the same probe twice at once
(a slow target is not hit by a pile of overlapping probes).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from listeners.core import child

__all__ = [
    "CommandProbe",
    "HttpProbe",
    "Probe",
    "ProbePool",
    "ProbeResult",
    "TcpProbe",
    "parse_hostport",
    "run_probe",
]

#: The most of a response body an HTTP probe reads when it looks for a text in it.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class HttpProbe:
    """GET ``url``; healthy when the status is one of ``statuses`` and ``body`` is in the body."""

    url: str
    statuses: tuple[int, ...] = (200,)
    body: str | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"probe URL {self.url!r} is not an http:// or https:// URL")

    def describe(self) -> str:
        return f"GET {self.url}"


@dataclass(frozen=True)
class TcpProbe:
    """Healthy when a TCP connection to ``host:port`` opens within the timeout."""

    host: str
    port: int
    timeout: float = 10.0

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


@dataclass(frozen=True)
class CommandProbe:
    """Healthy when ``argv`` exits 0 within the timeout (run without a shell)."""

    argv: tuple[str, ...]
    timeout: float = 10.0

    def describe(self) -> str:
        return "command " + " ".join(self.argv)


Probe = HttpProbe | TcpProbe | CommandProbe


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    seconds: float


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (loopback); raises ValueError naming the bad text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:8080)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _left(deadline: float, clock: Callable[[], float]) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed."""
    left = deadline - clock()
    if left <= 0:
        raise TimeoutError
    return left


def _connect(host: str, port: int, deadline: float, clock: Callable[[], float]) -> socket.socket:
    """Open a TCP connection, every address tried within what is left of one deadline."""
    error: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline, clock))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
        else:
            return sock
    raise error or OSError(f"no address for {host}")


def _http(probe: HttpProbe, clock: Callable[[], float] = time.monotonic) -> tuple[bool, str]:
    """GET with one deadline for the whole exchange, not a timeout per read.

    A server that trickles its answer a byte at a time never lets a per-read timeout expire;
    here every read only gets what is left of ``probe.timeout``. HTTP/1.0 keeps the answer
    unchunked, so the body text is searched in what arrives.
    """
    deadline = clock() + probe.timeout
    parts = urllib.parse.urlsplit(probe.url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sock = _connect(host, port, deadline, clock)
    try:
        if secure:
            import ssl  # only an https probe pays for OpenSSL

            sock.settimeout(_left(deadline, clock))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.settimeout(_left(deadline, clock))
        sock.sendall(
            f"GET {path} HTTP/1.0\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
            "User-Agent: supervisor-health\r\nAccept-Encoding: identity\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        want = probe.body.encode("utf-8") if probe.body is not None else None
        answer = b""
        while True:
            sock.settimeout(_left(deadline, clock))
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and (want is None or want in body or len(body) >= MAX_BODY):
                break
            if not sep and len(answer) > MAX_BODY:
                raise ValueError(f"{probe.url} sent more than {MAX_BODY} bytes of headers")
    finally:
        sock.close()
    head, _sep, body = answer.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split(None, 2)
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        if not answer:
            return False, f"{probe.url} closed the connection without an answer"
        return False, f"{probe.url} did not answer HTTP ({answer[:40]!r})"
    status = int(words[1])
    if status not in probe.statuses:
        expected = ", ".join(str(s) for s in probe.statuses)
        return False, f"status {status} from {probe.url} (expected {expected})"
    if want is not None and want not in body[:MAX_BODY]:
        return False, f"{probe.url} answered {status} without {probe.body!r} in its body"
    return True, f"status {status}"


def _tcp(probe: TcpProbe, clock: Callable[[], float] = time.monotonic) -> tuple[bool, str]:
    _connect(probe.host, probe.port, clock() + probe.timeout, clock).close()
    return True, "connected"


def _command(probe: CommandProbe) -> tuple[bool, str]:
    done = child.run(probe.argv, probe.timeout, leave_nothing=True)
    if done.returncode == 0:
        return True, "exit 0"
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return False, f"exit {done.returncode} {tail[0][:200]}".rstrip()


def run_probe(probe: Probe, clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """Run ``probe`` once on the calling thread; a failure is a result, never an exception."""
    started = clock()
    try:
        if isinstance(probe, HttpProbe):
            ok, detail = _http(probe)
        elif isinstance(probe, TcpProbe):
            ok, detail = _tcp(probe)
        else:
            ok, detail = _command(probe)
    except subprocess.TimeoutExpired:
        ok, detail = False, f"{probe.describe()} did not finish in {probe.timeout:g} s"
    except TimeoutError:
        verb = "did not connect" if isinstance(probe, TcpProbe) else "did not answer in full"
        ok, detail = False, f"{probe.describe()} {verb} within {probe.timeout:g} s"
    except (OSError, ValueError) as exc:
        ok, detail = False, f"{probe.describe()} failed: {exc or type(exc).__name__}"
    return ProbeResult(ok=ok, detail=detail, seconds=clock() - started)


class ProbePool:
    """Runs probes on ``threads`` threads; ``submit`` returns at once.

    ``submit(key, probe, done)`` is refused (False) while the probe of the same ``key`` still
    runs; ``done(key, result)`` is called on a pool thread.
    """

    def __init__(
        self,
        threads: int = 8,
        *,
        runner: Callable[[Probe], ProbeResult] = run_probe,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="probe")
        self._runner = runner
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def submit(self, key: str, probe: Probe, done: Callable[[str, ProbeResult], None]) -> bool:
        """False when the probe of ``key`` still runs, or the pool is closed (a listener
        stopping while a round of probes is being handed out)."""
        with self._lock:
            if self._closed or key in self._running:
                return False
            self._running.add(key)
            self._executor.submit(self._run, key, probe, done)
        return True

    def _run(self, key: str, probe: Probe, done: Callable[[str, ProbeResult], None]) -> None:
        try:
            result = self._runner(probe)
        finally:
            with self._lock:
                self._running.discard(key)
        done(key, result)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)
