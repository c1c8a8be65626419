"""Every listener as a real process, on the streams a broken pipe can give it: stdout closed
under it, or SIGTERM in the middle of a frame. What a person reads on stderr is one line and
what supervisord sees is an exit, never a traceback or a hang.

The listener runs by hand, outside supervisord, so that the test owns its streams; it talks to
a real supervisord (memmon and health ask it for its processes before they say READY)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.support import PYTHON, WORKER, Supervisord

ROOT = Path(__file__).parents[1]
TICK = "ver:3.0 server:supervisor serial:1 pool:x poolserial:1 eventname:TICK_5 len:{}\n"


def tool_args(tool: str, tmp_path: Path) -> list[str]:
    return {
        "crashmail": ["--sink", f"file:{tmp_path}/a.jsonl", "--outbox", f"{tmp_path}/o.db"],
        "exporter": ["--web.listen-address", "127.0.0.1:0"],
        "memmon": ["-a", "16MB"],
        "health": ["-p", "web", "--tcp", "127.0.0.1:9", "--state-dir", str(tmp_path)],
        "httpok": ["-p", "web", "http://127.0.0.1:9/"],
    }[tool]


def start(tool: str, tmp_path: Path, sup: Supervisord) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SUPERVISOR_SERVER_URL": sup.url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", f"listeners.{tool}", *tool_args(tool, tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def error_lines(err: str) -> list[dict[str, object]]:
    said = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    return [d for d in said if d["level"] in ("error", "critical")]


def pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes], IO[bytes]]:
    """stdin, stdout and stderr, once the listener has said READY."""
    if proc.stdin is None or proc.stdout is None or proc.stderr is None:
        raise AssertionError("the listener was started without pipes")
    assert b"READY\n" == proc.stdout.readline()
    return proc.stdin, proc.stdout, proc.stderr


TOOLS = ["crashmail", "exporter", "memmon", "health", "httpok"]


@pytest.fixture
def sup(supervisord) -> Supervisord:
    made: Supervisord = supervisord(
        f"[program:web]\ncommand={PYTHON} {WORKER} steady\nstartsecs=0\n"
    )
    made.wait_state("web:web", "RUNNING")
    return made


class TestStdoutClosed:
    @pytest.mark.parametrize("tool", TOOLS)
    def test_a_closed_stdout_is_one_error_line_and_exit_1(self, tool, tmp_path, sup):
        """supervisord gone: the answer to an event cannot be written. One line, exit 1."""
        proc = start(tool, tmp_path, sup)
        stdin, stdout, stderr = pipes(proc)
        stdout.close()  # the reading end goes away: the next write is EPIPE
        stdin.write((TICK.format(6) + "when:1").encode())
        stdin.close()
        err = stderr.read().decode("utf-8", "replace")
        code = proc.wait(30)
        assert (code != 0, "Traceback" in err) == (True, False), err
        assert 1 == len(error_lines(err)), err


class TestSigtermMidFrame:
    @pytest.mark.parametrize("tool", TOOLS)
    def test_sigterm_during_a_partial_frame_exits_at_once_without_a_traceback(
        self, tool, tmp_path, sup
    ):
        """Half a header sent, then SIGTERM (supervisorctl stop): the listener ends, cleanly."""
        proc = start(tool, tmp_path, sup)
        stdin, _, stderr = pipes(proc)
        stdin.write(b"ver:3.0 server:supervisor serial:1 pool")
        stdin.flush()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        err = stderr.read().decode("utf-8", "replace")
        assert ("Traceback" in err, code in (0, 1, -signal.SIGTERM)) == (False, True), (code, err)
