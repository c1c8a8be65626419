"""Events per second a listener sustains through a real supervisord.

Three listeners take turns in the same run, each alone in its pool. Workers write stdout lines
(stdout_events_enabled: each becomes a PROCESS_LOG_STDOUT event) while the listener holds its
first event, so supervisord queues the whole burst; then the listener drains the queue and the
drain rate is measured. Only supervisord and the listener run during the drain, both pinned to
one core, so the figure is the CPU cost of a round trip, not the workers' speed or the noise of
cross-core wake-ups:

- ``protocol``: a listener built on listeners.core.protocol that counts events;
- ``childutils``: the minimal listener from supervisor's own docs (supervisor.childutils);
- ``floor``: a raw loop that reads a header and payload and answers OK, parsing nothing; its
  rate is supervisord's own ceiling on this machine.

    python bench/protocol.py [--rounds 5] [--workers 10] [--lines 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.support import PYTHON, Supervisord, wait_for

WORKER = (
    "import sys, time\n"
    "for i in range(int(sys.argv[1])):\n"
    "    sys.stdout.write('x' * 40 + '\\n'); sys.stdout.flush(); time.sleep(0.002)\n"
    "time.sleep(3600)\n"
)

# Every listener holds its first event until the go file exists (so supervisord queues the
# whole burst), then drains the queue, appending "count monotonic-time" every 200 events.
HOLD = "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.01)\n"

LISTENERS = {
    "protocol": textwrap.dedent("""\
        import os, sys, time
        from listeners.core import protocol

        class Count(protocol.Handler):
            def __init__(self, path):
                self.out, self.n = open(path, "a"), 0
            def handle(self, event):
                if self.n == 0:
                    HOLD
                self.n += 1
                if self.n % 200 == 0:
                    self.out.write(f"{self.n} {time.monotonic()}\\n"); self.out.flush()

        sys.exit(protocol.run(Count(sys.argv[1])))
        """).replace("HOLD", textwrap.indent(HOLD, " " * 12).strip()),
    "childutils": textwrap.dedent("""\
        import os, sys, time
        from supervisor import childutils

        out, n = open(sys.argv[1], "a"), 0
        while True:
            headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
            if n == 0:
                HOLD
            n += 1
            if n % 200 == 0:
                out.write(f"{n} {time.monotonic()}\\n"); out.flush()
            childutils.listener.ok(sys.stdout)
        """).replace("HOLD", textwrap.indent(HOLD, " " * 8).strip()),
    "floor": textwrap.dedent("""\
        import os, sys, time
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
        stdout.write(b"READY\\n"); stdout.flush()
        out, n = open(sys.argv[1], "a"), 0
        while True:
            line = stdin.readline()
            if not line:
                break
            stdin.read(int(line.rsplit(b"len:", 1)[1]))
            if n == 0:
                HOLD
            n += 1
            if n % 200 == 0:
                out.write(f"{n} {time.monotonic()}\\n"); out.flush()
            stdout.write(b"RESULT 2\\nOKREADY\\n"); stdout.flush()
        """).replace("HOLD", textwrap.indent(HOLD, " " * 8).strip()),
}


def read_counts(path: Path) -> list[tuple[int, float]]:
    try:
        rows = [line.split() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []
    return [(int(n), float(t)) for n, t in rows]


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (resolution 1/CLK_TCK)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(kind: str, lines: int, workers: int) -> tuple[float, float, float]:
    """Queue about workers * lines events behind a held listener, then time the drain."""
    scratch = Path(f"/tmp/bench-protocol-{kind}")
    scratch.mkdir(exist_ok=True)
    script = scratch / "listener.py"
    script.write_text(LISTENERS[kind])
    worker = scratch / "worker.py"
    worker.write_text(WORKER)
    counts, go = scratch / "count.txt", scratch / "go"
    counts.unlink(missing_ok=True)
    go.unlink(missing_ok=True)
    repo = Path(__file__).resolve().parents[1]
    sup = Supervisord(
        f"""
        [program:spam]
        command={PYTHON} {worker} {lines}
        numprocs={workers}
        process_name=%(program_name)s_%(process_num)02d
        stdout_events_enabled=true
        stdout_logfile=NONE
        startsecs=0

        [eventlistener:bench]
        command={PYTHON} {script} {counts} {go}
        events=PROCESS_LOG
        buffer_size={workers * lines + 100}
        environment=PYTHONPATH="{repo}"
        """
    )
    try:
        sup.start()
        # the workers need about lines * 2 ms; give them that plus slack, then let go
        time.sleep(lines * 0.002 * 1.5 + 2)
        # supervisord and the listener share one core for the drain: the figure is then their
        # CPU cost per event, without the noise of cross-core wake-ups on a busy machine
        assert sup.proc is not None
        core = {max(os.sched_getaffinity(0))}
        listener_pid = sup.info("bench:bench")["pid"]
        for pid in (sup.proc.pid, listener_pid):
            os.sched_setaffinity(pid, core)
        cpu0 = cpu_seconds(sup.proc.pid), cpu_seconds(listener_pid)
        go.touch()

        def drained() -> bool:
            before = read_counts(counts)
            time.sleep(0.5)
            after = read_counts(counts)
            return bool(after) and before == after

        wait_for(drained, 120, interval=0, what=f"{kind} drained")
        cpu1 = cpu_seconds(sup.proc.pid), cpu_seconds(listener_pid)
        rows = read_counts(counts)
        (n0, t0), (n1, t1) = rows[0], rows[-1]
        total = rows[-1][0]
        per_event_us = [(b - a) / total * 1e6 for a, b in zip(cpu0, cpu1, strict=True)]
        return (n1 - n0) / (t1 - t0), per_event_us[0], per_event_us[1]
    finally:
        sup.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines per worker")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {k: [] for k in LISTENERS}
    sup_cpu: dict[str, list[float]] = {k: [] for k in LISTENERS}
    own_cpu: dict[str, list[float]] = {k: [] for k in LISTENERS}
    for _ in range(args.rounds):
        for kind in LISTENERS:  # interleaved so that machine noise hits all three alike
            rate, sup_us, own_us = measure(kind, args.lines, args.workers)
            rates[kind].append(rate)
            sup_cpu[kind].append(sup_us)
            own_cpu[kind].append(own_us)
    med = {k: statistics.median(v) for k, v in rates.items()}
    own = {k: statistics.median(v) for k, v in own_cpu.items()}
    total = args.workers * args.lines
    print(
        f"events/s draining ~{total} queued events through a real supervisord"
        f" (median of {args.rounds} rounds)"
    )
    print(
        f"  {'listener':<11} {'events/s':>8}   {'CPU us/event: listener':>22}  {'supervisord':>11}"
    )
    for kind in LISTENERS:
        runs = ", ".join(f"{r:.0f}" for r in rates[kind])
        sup_us = statistics.median(sup_cpu[kind])
        print(f"  {kind:<11} {med[kind]:>8.0f}   {own[kind]:>22.1f}  {sup_us:>11.1f}   ({runs})")
    print(f"  protocol / childutils = {med['protocol'] / med['childutils']:.2f}  (goal >= 1.0)")
    ratio = own["childutils"] / own["protocol"]
    print(f"  listener CPU, childutils / protocol = {ratio:.2f}  (> 1: protocol is cheaper)")
    ratio = med["protocol"] / med["floor"]
    print(f"  protocol / floor      = {ratio:.2f}  (floor: supervisord's own ceiling)")


if __name__ == "__main__":
    main()
