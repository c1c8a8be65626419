"""Liveness probes (HTTP, TCP connect, a command) and a pool that runs them off the event loop.

A probe is a frozen description; ``run_probe`` performs it once with its own timeout and never
raises. ``ProbePool`` runs probes on a few threads so that a probe that hangs until its
deadline holds up neither the event loop nor the other probes, and never runs the same probe
twice at once (a slow target is not hit by a pile of overlapping probes).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


def _http(probe: HttpProbe) -> tuple[bool, str]:
    parts = urllib.parse.urlsplit(probe.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_class(parts.hostname or "", parts.port, timeout=probe.timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "supervisor-health"})
        response = conn.getresponse()
        status = response.status
        body = response.read(MAX_BODY) if probe.body is not None else b""
    finally:
        conn.close()
    if status not in probe.statuses:
        want = ", ".join(str(s) for s in probe.statuses)
        return False, f"status {status} from {probe.url} (expected {want})"
    if probe.body is not None and probe.body not in body.decode("utf-8", "replace"):
        return False, f"{probe.url} answered {status} without {probe.body!r} in its body"
    return True, f"status {status}"


def _tcp(probe: TcpProbe) -> tuple[bool, str]:
    with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
        return True, "connected"


def _command(probe: CommandProbe) -> tuple[bool, str]:
    done = subprocess.run(
        probe.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=probe.timeout,
        check=False,
    )
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
        ok, detail = False, f"{probe.describe()} timed out after {probe.timeout:g} s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
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

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def submit(self, key: str, probe: Probe, done: Callable[[str, ProbeResult], None]) -> bool:
        with self._lock:
            if key in self._running:
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
        self._executor.shutdown(wait=False, cancel_futures=True)
