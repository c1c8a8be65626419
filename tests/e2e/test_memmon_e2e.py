"""memmon against a real supervisord, real leaking workers and a real bus."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for

ROOT = str(Path(__file__).parents[2])
MB = 1024 * 1024
LIMIT = 16 * MB
# Crash-looping workers that feed memmon a steady stream of PROCESS_STATE events.
FLAPPY = "startsecs=0\n        autostart=false"


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
        # memmon's first check runs at its start: the leaker may be restarted before the pids
        # above were read, so the restarted pid is one supervisord spawned for it, not a guess
        assert first["pid"] in spawned_pids(sup, "leaky_00")
        assert first["pid"] != pids(sup)["leaky:leaky_00"]
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


def spawned_pids(sup: Supervisord, name: str) -> list[int]:
    """Every pid supervisord's log says it spawned for process ``name``."""
    found = re.findall(rf"spawned: '{re.escape(name)}' with pid (\d+)", sup.log_text())
    return [int(p) for p in found]


def tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


class TestCumulative:
    def test_a_worker_whose_child_leaks_is_left_alone_without_c(self, supervisord, tmp_path):
        """Without -c only the worker's own pid counts, so a leaking child goes unnoticed."""
        log = tmp_path / "memmon.log"
        sup = supervisord(
            program("parent", "child-leak --mb-per-s 16 --stop-at-mb 30")
            + memmon_conf("-a 16MB --interval 0.3 --log-level debug", log)
        )
        wait_for(lambda: started(log), what="memmon started")
        pid = sup.info("parent:parent_00")["pid"]
        wait_for(lambda: tree_rss(pid) > 30 * MB, 20, what="child past 30 MB")
        oks = len(decisions(log, "ok"))
        time.sleep(1.5)  # five more checks at 0.3 s, with the tree well past the limit
        assert len(decisions(log, "ok")) >= oks + 3
        assert pid == sup.info("parent:parent_00")["pid"]
        assert [] == decisions(log, "restart")

    def test_with_c_a_worker_whose_child_leaks_is_restarted(self, supervisord, tmp_path):
        """With -c the worker is judged with its descendants and restarted."""
        log = tmp_path / "memmon.log"
        sup = supervisord(
            program("parent", "child-leak --mb-per-s 16 --stop-at-mb 30")
            + memmon_conf("-a 16MB -c --interval 0.3", log)
        )
        wait_for(lambda: started(log), what="memmon started")
        pid = sup.info("parent:parent_00")["pid"]
        wait_for(lambda: sup.info("parent:parent_00")["pid"] not in (0, pid), 30, what="restart")
        sup.wait_state("parent:parent_00", "RUNNING")
        row = decisions(log, "restart")[0]
        assert row["pid"] in spawned_pids(sup, "parent_00")  # its first check is at start
        assert row["pid"] != sup.info("parent:parent_00")["pid"]
        assert row["processes"] >= 2


class TestSafety:
    def test_max_restarts_stops_the_loop_and_announces_it(self, supervisord, tmp_path):
        """After 2 restarts in the window memmon leaves the leaker running and says so."""
        log, bus_out = tmp_path / "memmon.log", tmp_path / "bus.txt"
        sup = supervisord(
            program("leaky", "leak --mb-per-s 32 --stop-at-mb 24")
            + memmon_conf("-a 16MB --interval 0.3 --max-restarts 2/10m --exclude busrec", log)
            + bus_conf(bus_out)
        )
        exhausted = wait_for(
            lambda: [m for m in messages(bus_out) if m["kind"] == "restarts_exhausted"],
            40,
            what="restarts_exhausted on the bus",
        )
        assert "leaky" == exhausted[0]["group"]
        assert 2 == exhausted[0]["restarts"]
        pid = sup.info("leaky:leaky_00")["pid"]
        time.sleep(1.5)
        assert pid == sup.info("leaky:leaky_00")["pid"]
        restarts = [m for m in messages(bus_out) if m["kind"] == "memory_restart"]
        assert 2 == len(restarts)
        assert 1 == len(decisions(log, "restarts_exhausted"))

    def test_a_slow_stop_does_not_block_event_handling(self, supervisord, tmp_path):
        """While one process takes 10 s to stop, memmon keeps acknowledging a stream of events
        (buffer_size 10, no overflow) and restarts another leaker meanwhile.

        Three crash loops at different paces give ~20 events a second in bursts of at most
        three; a listener blocked for the 10 s stop would overflow a buffer of 10 many times.
        """
        log = tmp_path / "memmon.log"
        sup = supervisord(
            program("slow", "slow-stop --delay 10", extra="autorestart=false")
            + "".join(
                program(f"flappy{i}", f"crash --after {after}", extra=FLAPPY)
                for i, after in enumerate((0.2, 0.3, 0.45))
            )
            + program("leaky", "leak --mb-per-s 4 --stop-at-mb 40")
            + memmon_conf("-p slow=1MB -p leaky=16MB --interval 0.3 --grace 1", log, buffer_size=10)
        )
        # The event stream starts once memmon is READY (a burst before that is not its fault).
        sup.wait_state("memmon:memmon", "RUNNING")
        wait_for(lambda: started(log), what="memmon started")
        for i in range(3):
            sup.client.call("supervisor.startProcessGroup", f"flappy{i}", False)
        wait_for(lambda: sup.state("slow:slow_00") == "STOPPING", 20, what="slow STOPPING")
        leaky = sup.info("leaky:leaky_00")["pid"]
        wait_for(
            lambda: sup.info("leaky:leaky_00")["pid"] not in (0, leaky), 20, what="leaky restart"
        )
        assert "STOPPING" == sup.state("slow:slow_00")
        sup.wait_state("slow:slow_00", "RUNNING", timeout=20)
        assert sup.log_text().count("exited: flappy") > 20
        assert [] == sup.bad_log_lines()
        sup.client.signal("slow:slow_00", "KILL")  # spare the teardown another 10 s stop


class TestScale:
    def test_fifty_workers_restarted_at_once_all_come_back(self, supervisord, tmp_path):
        """50 leakers over the limit together are all restarted and all come back RUNNING
        (with --max-unavailable 100%: the mass-restart guard is off)."""
        log = tmp_path / "memmon.log"
        sup = supervisord(
            program("leaky", "leak --mb-per-s 64 --stop-at-mb 20", numprocs=50)
            + memmon_conf("-a 16MB --interval 0.5 --max-restarts 1/1h --max-unavailable 100%%", log)
        )
        wait_for(lambda: started(log), what="memmon started")
        names = [k for k in pids(sup) if k.startswith("leaky:")]
        assert 50 == len(names)

        # memmon may restart the first leakers while others are still starting, so the old
        # pids come from its own restart decisions, not from a snapshot taken by the test.
        def restarted() -> dict[str, int]:
            return {r["process"]: r["pid"] for r in decisions(log, "restart")}

        wait_for(lambda: len(restarted()) == 50, 90, what="50 restart decisions")
        sup.wait_all("RUNNING", names=names, timeout=60)
        old = restarted()
        now = pids(sup)
        assert sorted(names) == sorted(old)
        assert [] == [k for k in names if now[k] in (0, old[k])]


class TestNoSecretsInTheLog:
    def test_a_listener_s_token_on_its_command_line_never_reaches_memmon_s_log(
        self, supervisord, tmp_path
    ):
        """crashmail runs with a webhook token in its command line, and memmon (judging
        every process, listeners included by name) logs what it skips and decides: the
        token appears nowhere in memmon's log."""
        log = tmp_path / "memmon.log"
        token = "T0KEN-s3cr3t-4242"  # noqa: S105 - a made-up secret to look for
        sup = supervisord(
            program("steady", "steady", numprocs=2)
            + f"""
        [eventlistener:crashmail]
        command={PYTHON} -m listeners.crashmail --sink webhook+https://hooks.example.invalid/{token}
            --outbox {tmp_path}/outbox.sqlite
        events=PROCESS_STATE
        buffer_size=1024
        stderr_logfile={tmp_path}/crashmail.log
        environment=PYTHONPATH="{ROOT}"
        """
            + memmon_conf("-a 1MB --dry-run --interval 0.5", log)
        )
        sup.wait_all("RUNNING", timeout=60)
        wait_for(lambda: decisions(log, "dry_run"), 60, what="memmon judging the workers")
        text = log.read_text()
        assert "crashmail" in text  # it did consider the pool: named, and skipped
        assert token not in text
