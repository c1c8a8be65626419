"""A flag mistake is one line on stderr, for every tool: in a supervisord stderr_logfile the
line that says what is wrong must not sit under a screenful of usage."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("crashmail", ["--bogus"], "unrecognized arguments: --bogus"),
    ("crashmail", ["--repeat", "0"], "invalid --repeat 0s"),
    ("memmon", ["-a", "16XB"], "-a"),
    ("exporter", ["--web.listen-address", "nowhere"], "--web.listen-address"),
    ("exporter", ["--grafana-url", "http://g/{foo}"], "unknown placeholder {foo}"),
    ("exporter", ["--tasks-conf", "/nonexistent/supervisord.conf"], "--tasks-conf"),
    ("health", ["--bogus"], "unrecognized arguments: --bogus"),
    ("health", ["-p", "web", "--heartbeat", "0"], "invalid --heartbeat 0s: must be greater"),
    ("health", ["-p", "web", "--command", "/nonexistent/probe"], "not an executable program"),
    ("health", ["-p", "web", "--heartbeat", "1m", "--rpc-timeout", "0"], "greater than zero"),
    ("tasks", ["enable"], "the following arguments are required: NAME"),
    ("httpok", ["-t", "x", "http://127.0.0.1:1/"], "-t"),
]


@pytest.mark.parametrize(
    ("tool", "argv", "said"), CASES, ids=[f"{c[0]}-{c[1][0]}-{i}" for i, c in enumerate(CASES)]
)
def test_a_bad_flag_is_one_line_saying_what_and_exits_2(tool, argv, said, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", f"listeners.{tool}", *argv],
        capture_output=True,
        text=True,
        env={**env, "SUPERVISOR_SERVER_URL": f"unix://{tmp_path}/none.sock"},
        timeout=60,
        check=False,
    )
    lines = done.stderr.splitlines()
    assert (done.returncode, len(lines)) == (2, 1), done.stderr
    assert lines[0].startswith(f"supervisor-{tool}"), lines[0]
    assert said in lines[0]
    assert "Traceback" not in done.stderr
