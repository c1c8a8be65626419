"""A real memmon that may not read a worker's memory fails open, and says so.

Story: "memmon runs as ``nobody`` beside a worker that runs as root: it cannot read the
worker's ``/proc/<pid>/smaps_rollup``, so it leaves the worker alone (although the worker is
far over its ceiling), logs at its first check which process it cannot read and what to do,
and Prometheus sees the blind spot". Nothing is injected: memmon's own bus message goes
through a real supervisord to a real exporter.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_exporter_e2e import exporter_conf, fetch, samples

ROOT = str(Path(__file__).parents[2])
USER = "nobody"
WORKER_NAME = "worker:worker_00"
COUNT = "supervisor_listeners_memmon_unreadable_processes"
PER_PROCESS = "supervisord_process_memory_unreadable"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: supervisord runs the worker as root, memmon as nobody"
)


def metric(port: int, name: str, /, **labels: str) -> float | None:
    return samples(fetch(port)).get((name, frozenset(labels.items())))


def log_rows(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]


def events(log: Path, name: str) -> list[dict[str, object]]:
    return [row for row in log_rows(log) if row.get("event") == name]


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A 0777 subdir of tmp_path that ``nobody`` can reach: each parent that does not let
    others through gets o+x (traverse, not list) for the test, and its mode back afterwards."""
    changed: list[tuple[Path, int]] = []
    try:
        for parent in reversed(tmp_path.parents):
            mode = stat.S_IMODE(parent.stat().st_mode)
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
                changed.append((parent, mode))
        mode = stat.S_IMODE(tmp_path.stat().st_mode)
        tmp_path.chmod(mode | stat.S_IXOTH)
        changed.append((tmp_path, mode))
        shared = tmp_path / "nobody"
        shared.mkdir()
        shared.chmod(0o777)
        for sub in ("home", "state"):
            (shared / sub).mkdir()
            (shared / sub).chmod(0o777)
        yield shared
    finally:
        for path, mode in reversed(changed):
            path.chmod(mode)


def python_for(user: pwd.struct_passwd, cwd: Path) -> tuple[str, str]:
    """An interpreter ``user`` may run that imports listeners.memmon, and its PYTHONPATH.

    The venv's python may live under a home only root can enter (pyenv in /root): then a system
    python of the same version runs the repo with the venv's site-packages on its path.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    candidates = [(PYTHON, ROOT)]
    for d in ("/usr/bin", "/usr/local/bin", "/bin"):
        if found := shutil.which(version, path=d):
            candidates.append((found, f"{ROOT}:{site}"))
    tried = []
    for python, path in candidates:
        try:
            probe = subprocess.run(
                [python, "-c", "import listeners.memmon"],
                check=False,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                env={"PYTHONPATH": path, "HOME": str(cwd), "PATH": os.defpath},
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError as exc:
            tried.append(f"{python}: {exc}")
            continue
        if probe.returncode == 0:
            return python, path
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1:]}")
    pytest.skip(f"no python {USER} may run that imports listeners.memmon: {'; '.join(tried)}")


def denied_to(user: pwd.struct_passwd, pid: int) -> bool:
    """True when ``user`` really may not read the smaps_rollup of ``pid`` (root's)."""
    probe = subprocess.run(
        ["cat", f"/proc/{pid}/smaps_rollup"],
        check=False,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode != 0 and b"Permission denied" in probe.stderr


class TestMemmonAsAnotherUser:
    def test_memmon_as_nobody_leaves_a_root_worker_alone_and_says_so_in_its_log_and_metrics(
        self, shared_dir, tmp_path, supervisord
    ):
        """memmon as nobody, a 1 MB ceiling on a root worker it cannot read: at its first check
        one ``memmon.unreadable`` warning names the worker and the fix, the exporter shows the
        worker as unreadable (1, count 1, the status page's warning), and the worker keeps its
        pid. (shared_dir comes first so that its modes are put back after supervisord stops.)"""
        try:
            nobody = pwd.getpwnam(USER)
        except KeyError:
            pytest.skip(f"no user {USER!r} on this host")
        python, pythonpath = python_for(nobody, shared_dir)
        port, rpc_port = free_port(), free_port()
        log = tmp_path / "memmon.log"
        home, state = shared_dir / "home", shared_dir / "state"
        # memmon as nobody cannot use the 0700 unix socket: it talks to supervisord over an
        # inet_http_server on loopback; the exporter and the test keep the socket.
        programs = textwrap.dedent(f"""
            [program:worker]
            command={PYTHON} {WORKER} steady
            process_name=%(program_name)s_%(process_num)02d
            startsecs=0
            autorestart=true

            [eventlistener:memmon]
            command={python} -m listeners.memmon -p worker=1MB --measure pss --interval 0.3
                --server-url http://127.0.0.1:{rpc_port}
            user={USER}
            directory={shared_dir}
            autostart=false
            events=PROCESS_STATE,TICK_5
            buffer_size=1024
            stderr_logfile={log}
            stderr_logfile_maxbytes=0
            environment=PYTHONPATH="{pythonpath}",HOME="{home}",XDG_STATE_HOME="{state}"
            """) + exporter_conf(port)
        sup = supervisord(programs, extra_conf=f"[inet_http_server]\nport=127.0.0.1:{rpc_port}\n")
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        worker = sup.wait_state(WORKER_NAME, "RUNNING", 30)
        assert psutil.Process(worker["pid"]).uids().real == 0
        assert denied_to(nobody, worker["pid"]), f"{USER} can read a root process's smaps_rollup"

        t0 = time.monotonic()
        sup.client.start("memmon:memmon", wait=True)
        memmon = sup.info("memmon:memmon")
        assert psutil.Process(memmon["pid"]).uids().real == nobody.pw_uid

        said = wait_for(lambda: events(log, "memmon.unreadable"), 30, 0.1, what="the warning")
        wait_for(lambda: metric(port, COUNT) == 1, 30, 0.1, what="the unreadable count")
        elapsed = time.monotonic() - t0
        assert elapsed < 10, f"warning and metric took {elapsed:.1f}s after memmon's start"
        assert 1 == metric(port, PER_PROCESS, group="worker", name="worker_00")
        assert "memmon cannot read 1 process: worker:worker_00" in fetch(port, "/")

        # at start: right after memmon.started, naming the worker, who memmon is, and the fix
        rows = log_rows(log)
        names = [r.get("event") for r in rows]
        assert names.index("memmon.started") < names.index("memmon.unreadable")
        warning = said[0]
        assert [WORKER_NAME] == warning["processes"]
        assert "denied" == warning["reason"]
        assert nobody.pw_uid == warning["uid"]
        assert "run memmon as their user or as root, or --exclude them" in str(warning["hint"])

        # fail open: over a 1 MB ceiling for several checks, still not judged nor restarted
        time.sleep(1.5)
        rows = log_rows(log)
        assert 1 == len([r for r in rows if r.get("event") == "memmon.unreadable"])
        assert [] == [r for r in rows if r.get("event") == "memmon.decision"]
        after = sup.info(WORKER_NAME)
        assert ("RUNNING", worker["pid"]) == (after["statename"], after["pid"])
        assert "RUNNING" == sup.state("memmon:memmon")
        assert 1 == metric(port, PER_PROCESS, group="worker", name="worker_00")
