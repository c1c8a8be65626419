"""Cost of one probe round at N HTTP workers, beside superlance httpok 2.0.0 with the same probes.

    .venv/bin/python bench/health.py [--workers 256] [--rounds 5] [--superlance-probes 32]

Starts a real supervisord with N HTTP workers (each answers on its own port), then, in this
process (same workers, same machine, one run):
- supervisor-health: a real Watchdog with its probe pool; one round probes every worker's URL
  (``{process_num}`` in the URL) and judges the answers; no RPC per round;
- superlance httpok: one httpok per URL (httpok probes one URL), each handed one TICK through
  its own ``runforever(test=True)``; each calls getAllProcessInfo, as httpok does on every tick.
  At 256 workers that is 256 getAllProcessInfo per round, so only ``--superlance-probes`` of them
  are run and the figures are given per probe.
For both: CPU seconds of this process (all threads) and of supervisord, per round and per probe,
medians of ``--rounds`` rounds, and the ratios superlance / supervisor-health. /proc counts CPU
in 10 ms ticks: a figure under one tick is given as a bound ("> Nx"), not as a ratio of zero.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from listeners.core import protocol
from listeners.core.log import configure
from listeners.core.supervisor import Connection, Supervisor
from listeners.watchdog.engine import Check, Watchdog, WatchdogConfig
from listeners.watchdog.probes import ProbePool
from tests.e2e.support import PYTHON, Supervisord

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "e2e" / "test_health_e2e.py"


class Inline:
    def submit(self, fn, *args):
        fn(*args)


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


#: /proc's CPU accounting step (USER_HZ 100)
TICK = 0.01


def ratio(theirs: float, ours: float, spread: int) -> str:
    """``theirs / ours`` as "82.0x"; an ``ours`` under one CPU tick spread over ``spread``
    samples (0 for wall time, which has no tick) gives the bound that tick allows."""
    floor = TICK / spread if spread else 0.0
    if ours > floor:
        return f"{theirs / ours:.1f}x"
    if floor == 0.0:
        return "n/a"
    return f"> {theirs / floor:.0f}x (ours under one tick)"


def me() -> float:
    return time.process_time()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--superlance-probes", type=int, default=32)
    ap.add_argument("--base-port", type=int, default=21000, help="a multiple of 1000")
    args = ap.parse_args()
    base = args.base_port

    sup = Supervisord(
        f"""
        [program:web]
        command={PYTHON} {SERVER} http {base // 1000}%(process_num)03d /nonexistent/flag
        numprocs={args.workers}
        process_name=%(program_name)s_%(process_num)03d
        startsecs=1
        """,
    )
    try:
        sup.start(timeout=300)
        sup.wait_all("RUNNING", timeout=300)
        client = Supervisor(Connection(url=sup.url, timeout=60))
        infos = [i for i in client.all_process_info() if i["group"] == "web"]
        assert sup.proc is not None
        supd = psutil.Process(sup.proc.pid)
        print(f"workers running: {len(infos)}  (machine: {psutil.cpu_count()} cores)")
        ports = [int(f"{base // 1000}{int(i['name'].rsplit('_', 1)[1]):03d}") for i in infos]
        deadline = time.monotonic() + 120
        while ports and time.monotonic() < deadline:  # RUNNING is not bound yet
            ports = [p for p in ports if not _accepts(p)]
            time.sleep(0.2)
        configure("warning")

        url = f"http://127.0.0.1:{base // 1000}{{process_num:03d}}/"
        check = Check("web", http=url, period=10.0, timeout=5.0, failures=3)
        clock = [time.time()]
        pool = ProbePool(8)
        dog = Watchdog(
            WatchdogConfig(checks=(check,), grace=0.0),
            client,
            pool=pool,
            rpc=Inline(),
            clock=lambda: clock[0],
            host="bench",
        )
        dog.status_every = 1e9  # the status message is not part of a probe round
        dog.start(infos)

        def our_round() -> tuple[float, float, float]:
            clock[0] += check.period
            c0, s0, t0 = me(), cpu(supd), time.perf_counter()
            dog.round()
            while pool.running():
                time.sleep(0.001)
            return me() - c0, cpu(supd) - s0, time.perf_counter() - t0

        our_round()  # warm-up: connections, threads
        ours = [our_round() for _ in range(args.rounds)]
        bad = [(w.key, w.probe_ok) for w in dog.watches.values() if w.probe_ok is not True]
        pool.close()

        from superlance.httpok import HTTPOk
        from supervisor import childutils

        rpc = childutils.getRPCInterface({"SUPERVISOR_SERVER_URL": sup.url})
        tick = protocol.format_event("TICK_60", "when:1")
        n = min(args.superlance_probes, len(infos))
        checkers = []
        for info in infos[:n]:
            num = int(info["name"].rsplit("_", 1)[1])
            checkers.append(
                HTTPOk(
                    rpc,
                    [info["name"]],
                    False,
                    f"http://127.0.0.1:{base // 1000}{num:03d}/",
                    5,
                    [200],
                    None,
                    None,
                    "true",
                    None,
                    "true",
                    True,
                    10,
                    None,
                )
            )

        def their_round() -> tuple[float, float, float]:
            c0, s0, t0 = me(), cpu(supd), time.perf_counter()
            for h in checkers:
                h.stdin, h.stdout, h.stderr = io.StringIO(tick), io.StringIO(), io.StringIO()
                h.runforever(test=True)
            return me() - c0, cpu(supd) - s0, time.perf_counter() - t0

        theirs = [their_round() for _ in range(args.rounds)]
        workers = len(infos)

        def med(rows: list[tuple[float, float, float]], i: int) -> float:
            return statistics.median(r[i] for r in rows)

        # per probe, seconds: listener CPU, supervisord CPU, wall
        ours_probe = [med(ours, i) / workers for i in range(3)]
        theirs_probe = [med(theirs, i) / n for i in range(3)]
        print()
        print(
            f"one probe round at {workers} HTTP workers (medians of {args.rounds} rounds;"
            f" superlance over {n} probes per round, scaled to {workers})"
        )
        print(
            f"  supervisor-health : listener CPU {ours_probe[0] * 1000:7.3f} ms/probe,"
            f" supervisord CPU {med(ours, 1) * 1000:7.1f} ms/round,"
            f" wall {med(ours, 2) * 1000:7.1f} ms/round"
        )
        print(
            f"  superlance httpok : listener CPU {theirs_probe[0] * 1000:7.3f} ms/probe,"
            f" supervisord CPU {theirs_probe[1] * workers * 1000:7.1f} ms/round,"
            f" wall {theirs_probe[2] * workers * 1000:7.1f} ms/round"
        )
        print(
            "  ratio superlance / supervisor-health:"
            f" listener CPU {ratio(theirs_probe[0], ours_probe[0], args.rounds * workers)},"
            f" supervisord CPU {ratio(theirs_probe[1] * workers, med(ours, 1), args.rounds)},"
            f" wall {ratio(theirs_probe[2], ours_probe[2], 0)}"
        )
        print(f"  unhealthy after the rounds (must be none): {bad[:5]}")
    finally:
        sup.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
