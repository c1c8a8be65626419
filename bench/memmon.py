"""Cost of one memmon check at 256 workers, beside superlance memmon 2.0.0 and a /proc floor.

    .venv/bin/python bench/memmon.py [--workers 256] [--runs 15]

Starts a real supervisord with N ``steady`` workers plus both memmons as event listeners, then
times one check of each in this process (same pids, same machine, one run):
- supervisor-memmon: ``Memmon.check()`` (one pass over cached /proc descriptors, no RPC);
- superlance memmon: one TICK through ``runforever(test=True)`` (getAllProcessInfo, ``ps`` per pid);
- floor: open and read /proc/<pid>/statm for each known pid, nothing else.
Also prints each listener's own RSS and PSS, read from the running listener processes.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from listeners.core import protocol
from listeners.core.supervisor import Connection, Supervisor
from listeners.memmon import Memmon, parse_args
from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for

ROOT = str(Path(__file__).resolve().parents[1])


class Inline:
    def submit(self, fn, *args):
        fn(*args)


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--superlance-runs", type=int, default=3)
    args = ap.parse_args()

    sup = Supervisord(
        f"""
        [program:steady]
        command={PYTHON} {WORKER} steady
        numprocs={args.workers}
        process_name=%(program_name)s_%(process_num)03d
        startsecs=1

        [eventlistener:memmon]
        command={PYTHON} -m listeners.memmon -a 16MB --interval 1
        events=PROCESS_STATE,TICK_5
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"

        [eventlistener:superlance_memmon]
        command={PYTHON} -m superlance.memmon -a 1GB
        events=TICK_5
        buffer_size=1024
        """,
    )
    sup.start(timeout=120)
    try:
        sup.wait_all("RUNNING", timeout=300)
        client = Supervisor(Connection(url=sup.url, timeout=60))
        infos = client.all_process_info()
        pids = {f"{i['group']}:{i['name']}": i["pid"] for i in infos if i["group"] == "steady"}
        print(f"workers running: {len(pids)}")

        # supervisor-memmon: a real Memmon, its check run in this thread.
        config = parse_args(["-a", "1GB", "--server-url", sup.url], env={})
        memmon = Memmon(config, client, rpc=Inline(), checker=Inline(), own_pid=os.getpid())
        memmon.start([i for i in infos if i["group"] == "steady"])
        memmon.check()  # opens the descriptors once, as the first check of a run does
        ours = timed(memmon.check, args.runs)

        # The floor: read statm of each known pid, nothing else.
        page = os.sysconf("SC_PAGE_SIZE")

        def floor() -> None:
            for pid in pids.values():
                with open(f"/proc/{pid}/statm", "rb") as fh:
                    int(fh.read().split()[1]) * page

        floor()
        base = timed(floor, args.runs)

        # superlance memmon 2.0.0: one TICK through its own loop.
        from superlance import memmon as sl
        from supervisor import childutils

        rpc = childutils.getRPCInterface({"SUPERVISOR_SERVER_URL": sup.url})
        theirs_mon = sl.Memmon(False, {}, {"steady": 1024**3}, None, "true", None, 0, None, rpc)
        tick = protocol.format_event("TICK_5", "when:1")

        def superlance_tick() -> None:
            theirs_mon.stdin = io.StringIO(tick)
            theirs_mon.stdout = io.StringIO()
            theirs_mon.stderr = io.StringIO()
            theirs_mon.runforever(test=True)

        theirs = timed(superlance_tick, args.superlance_runs)

        print()
        print(f"one check at {len(pids)} workers (median)")
        print(f"  superlance memmon 2.0.0 : {theirs * 1000:10.2f} ms")
        print(f"  supervisor-memmon       : {ours * 1000:10.2f} ms")
        print(f"  floor (statm read only) : {base * 1000:10.2f} ms")
        print(f"  superlance / memmon     : {theirs / ours:10.1f}x   (goal >= 100x)")
        print(f"  memmon / floor          : {ours / base:10.2f}x   (goal <= 2x)")

        # Own memory of each listener, after both have handled ticks.
        time.sleep(6)
        wait_for(lambda: sup.state("superlance_memmon:superlance_memmon") == "RUNNING", 30)
        print()
        print("own memory of the running listener")
        for name in ("memmon:memmon", "superlance_memmon:superlance_memmon"):
            proc = psutil.Process(sup.info(name)["pid"])
            full = proc.memory_full_info()
            label = "supervisor-memmon" if name.startswith("memmon") else "superlance memmon"
            print(
                f"  {label:24s}: RSS {full.rss / 2**20:6.1f} MiB  PSS {full.pss / 2**20:6.1f} MiB"
            )
        print("  (goal: supervisor-memmon PSS <= 20 MiB)")
    finally:
        sup.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
