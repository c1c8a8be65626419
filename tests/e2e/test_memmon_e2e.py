"""memmon against a real supervisord, real leaking workers and a real bus."""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for

ROOT = str(Path(__file__).parents[2])
MB = 1024 * 1024
LIMIT = 16 * MB


def memmon_conf(flags: str, log: Path, *, name: str = "memmon", buffer_size: int = 1024) -> str:
    return f"""
        [eventlistener:{name}]
        command={PYTHON} -m listeners.memmon {flags}
        events=PROCESS_STATE,TICK_5
        buffer_size={buffer_size}
        stderr_logfile={log}
        stderr_logfile_maxbytes=0
        environment=PYTHONPATH="{ROOT}"
        """


def bus_conf(out: Path) -> str:
    return f"""
        [eventlistener:busrec]
        command={PYTHON} {WORKER} bus-record --out {out}
        events=REMOTE_COMMUNICATION
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"
        """


def program(name: str, args: str, *, numprocs: int = 1, extra: str = "") -> str:
    return f"""
        [program:{name}]
        command={PYTHON} {WORKER} {args}
        numprocs={numprocs}
        process_name=%(program_name)s_%(process_num)02d
        startsecs=1
        autorestart=true
        stopwaitsecs=20
        {extra}
        """


def messages(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, _, data = line.partition(" ")
        if kind == "listeners.memmon":
            out.append(json.loads(data))
    return out


def pids(sup: Supervisord) -> dict[str, int]:
    return {f"{i['group']}:{i['name']}": i["pid"] for i in sup.client.all_process_info()}


def decisions(log: Path, action: str) -> list[dict[str, object]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("event") == "memmon.decision" and row.get("action") == action:
                rows.append(row)
    return rows


def started(log: Path) -> bool:
    return log.exists() and "memmon.started" in log.read_text()


class TestCeiling:
    def test_a_worker_leaking_past_16mb_is_restarted_and_nothing_else_is_touched(
        self, supervisord, tmp_path
    ):
        """Only the leaker is restarted, within one check; steady workers and listeners keep
        their pids although every listener is far over 16 MB."""
        log, bus_out = tmp_path / "memmon.log", tmp_path / "bus.txt"
        sup = supervisord(
            program("steady", "steady", numprocs=3)
            + program("leaky", "leak --mb-per-s 16 --stop-at-mb 40")
            + memmon_conf("-a 16MB --interval 0.5 --exclude busrec", log)
            + memmon_conf(
                "-a 16MB --interval 0.5 --dry-run --exclude busrec",
                tmp_path / "b.log",
                name="memmon_b",
            )
            + bus_conf(bus_out)
        )
        wait_for(lambda: started(log) and started(tmp_path / "b.log"), what="both memmons started")
        before = pids(sup)
        leaky_pid = before["leaky:leaky_00"]
        wait_for(
            lambda: pids(sup)["leaky:leaky_00"] not in (0, leaky_pid), 30, what="leaky restarted"
        )
        sup.wait_state("leaky:leaky_00", "RUNNING")
        restarts = [m for m in messages(bus_out) if m["kind"] == "memory_restart"]
        wait_for(lambda: [m for m in messages(bus_out) if m["kind"] == "memory_restart"], 10)
        restarts = [m for m in messages(bus_out) if m["kind"] == "memory_restart"]
        assert {"leaky"} == {m["group"] for m in restarts}
        first = restarts[0]
        assert leaky_pid == first["pid"]
        limit = LIMIT
        assert limit == first["limit_bytes"]
        # The first over-limit reading must have led to the restart (within one check).
        row = decisions(log, "restart")
        assert row
        assert row[0]["measured"] > 16 * MB
        after = pids(sup)
        for key in ("steady:steady_00", "steady:steady_01", "steady:steady_02"):
            assert before[key] == after[key]
        for key in ("memmon:memmon", "memmon_b:memmon_b", "busrec:busrec"):
            assert before[key] == after[key]
            assert psutil.Process(after[key]).memory_info().rss > 16 * MB
        limits = [m for m in messages(bus_out) if m["kind"] == "memory_limits"]
        assert limits
        assert "memmon_b:memmon_b" not in limits[-1]["limits"]
        assert "busrec:busrec" not in limits[-1]["limits"]
        assert limit == limits[-1]["limits"]["steady:steady_00"]
