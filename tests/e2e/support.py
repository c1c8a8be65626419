"""A real supervisord for e2e tests: a temp dir, a unix socket, a conf written by the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from listeners.core.supervisor import Connection, Supervisor, SupervisorError

__all__ = ["PYTHON", "WORKER", "Supervisord", "free_port", "wait_for"]

T = TypeVar("T")

PYTHON = sys.executable
WORKER = str(Path(__file__).with_name("worker.py"))
#: Lines that must never appear in supervisord's log after a test: a lost or broken listener.
BAD_LOG_LINES = ("UNKNOWN", "bad result line", "overflowed")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (SupervisorError, OSError) as exc:
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last_exc}")


class Supervisord:
    """One supervisord in the foreground, stopped and checked by the fixture that made it."""

    def __init__(self, programs: str, *, extra_conf: str = "", env: dict[str, str] | None = None):
        # unix socket paths are limited to ~107 bytes: keep the dir short.
        self.dir = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
        self.sock = self.dir / "s.sock"
        self.log = self.dir / "supervisord.log"
        self.url = f"unix://{self.sock}"
        self.env = {**os.environ, **(env or {})}
        self.conf = self.dir / "supervisord.conf"
        self.write_conf(programs, extra_conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Supervisor(Connection(url=self.url, timeout=30))

    def write_conf(self, programs: str, extra_conf: str = "") -> None:
        self.conf.write_text(
            textwrap.dedent(f"""\
            [unix_http_server]
            file={self.sock}
            chmod=0700

            [supervisord]
            logfile={self.log}
            logfile_maxbytes=0
            loglevel=info
            pidfile={self.dir}/supervisord.pid
            childlogdir={self.dir}
            nodaemon=true
            minfds=1024
            minprocs=200

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl={self.url}
            """)
            + textwrap.dedent(extra_conf)
            + "\n"
            + textwrap.dedent(programs)
        )

    def start(self, timeout: float = 30.0) -> Supervisord:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.client.state() == "RUNNING", timeout, what="supervisord RUNNING")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill_fast(self) -> None:
        """End supervisord and every process group it started at once, for teardown.

        A polite SIGTERM costs 2-4 s per test (supervisord's loop wakes once a second to see its
        children go); tests that care about a clean stop call ``stop()`` themselves first.
        supervisord puts each child in a process group of its own, so kill those groups too.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            pids = [int(i["pid"]) for i in self.client.all_process_info() if i.get("pid")]
        except Exception:  # supervisord already unreachable: fall back to the polite stop
            self.stop()
            return
        self.proc.kill()
        self.proc.wait(10)
        for pid in pids:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                    break
                except (ProcessLookupError, PermissionError):
                    continue

    def restart(self) -> None:
        """Stop and start supervisord again with the same conf (a host reboot, in short)."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def bad_log_lines(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines() if any(b in ln for b in BAD_LOG_LINES)]

    def info(self, name: str) -> dict[str, Any]:
        return self.client.process_info(name)

    def state(self, name: str) -> str:
        return str(self.info(name)["statename"])

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        return wait_for(
            lambda: (i := self.info(name))["statename"] == state and i,
            timeout,
            what=f"{name} {state}",
        )

    def wait_all(self, state: str, names: list[str] | None = None, timeout: float = 30.0) -> None:
        def done() -> bool:
            infos = self.client.all_process_info()
            return all(
                i["statename"] == state
                for i in infos
                if names is None or f"{i['group']}:{i['name']}" in names
            )

        wait_for(done, timeout, what=f"all {state}")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def small_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (needs root and mount): the test is skipped where it
    cannot be mounted; unmounted (lazily) afterwards."""
    import pytest

    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
