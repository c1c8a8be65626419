"""core/child.py: a helper program that times out is ended with everything it started."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from listeners.core import child
from listeners.watchdog.probes import CommandProbe, run_probe


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def hung_script(tmp_path: Path) -> tuple[list[str], Path]:
    """A shell script that starts a grandchild, notes its pid, then waits forever."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    return ["sh", "-c", script], pidfile


def wait_pid(pidfile: Path) -> int:
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise AssertionError("the script never started its grandchild")


def test_a_timeout_kills_the_grandchild_too(tmp_path):
    argv, pidfile = hung_script(tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        child.run(argv, 1.0)
    grandchild = wait_pid(pidfile)
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.05)
    assert not alive(grandchild), "the sleep started by the timed-out script lives on"


def test_plain_subprocess_run_leaves_it_behind(tmp_path):
    """What the helper is for: subprocess.run's timeout ends only the script."""
    argv, pidfile = hung_script(tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(argv, timeout=1.0, capture_output=True, check=False)
    grandchild = wait_pid(pidfile)
    try:
        assert alive(grandchild)
    finally:
        subprocess.run(["kill", "-9", str(grandchild)], check=False)


def test_stdin_exit_status_and_both_outputs():
    code = "import sys; d = sys.stdin.read(); print(d.upper()); sys.stderr.write('e'); sys.exit(3)"
    done = child.run([sys.executable, "-c", code], 10, data=b"abc", keep_stdout=True)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (3, b"ABC", b"e")


def test_a_program_that_is_not_there_raises_oserror():
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        child.run(["/nonexistent/helper"], 1)


def test_a_hung_command_probe_leaves_no_orphan(tmp_path):
    argv, pidfile = hung_script(tmp_path)
    result = run_probe(CommandProbe(argv=tuple(argv), timeout=1.0))
    assert not result.ok
    assert "did not finish in 1 s" in result.detail
    grandchild = wait_pid(pidfile)
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.05)
    assert not alive(grandchild)


def test_a_probe_that_exits_leaves_no_background_child(tmp_path):
    """A probe that exits 0 after starting a background child (every few seconds): the child
    goes with it, so they do not pile up (15 after 30 s at period 2 s before)."""
    pidfile = tmp_path / "bg.pid"
    argv = ("sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; exit 0")
    result = run_probe(CommandProbe(argv=argv, timeout=5.0))
    assert result.ok, result.detail
    background = wait_pid(pidfile)
    for _ in range(50):
        if not alive(background):
            break
        time.sleep(0.05)
    assert not alive(background)


def test_a_sendmail_may_leave_its_delivery_running(tmp_path):
    """Outside probes a helper that finished keeps what it started (a sendmail that hands
    the mail to a background delivery process)."""
    pidfile = tmp_path / "bg.pid"
    argv = ["sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; exit 0"]
    assert 0 == child.run(argv, 5).returncode
    background = wait_pid(pidfile)
    try:
        assert alive(background)
    finally:
        subprocess.run(["kill", "-9", str(background)], check=False)
