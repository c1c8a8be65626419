"""Own memory of the suite's three listeners beside superlance's memmon + crashmail, at N workers.

    .venv/bin/python bench/listeners_memory.py [--workers 256] [--settle 20]

Starts one real supervisord with N ``steady`` workers and one worker that crashes every few
seconds, and under it, side by side:
- ours: supervisor-memmon, supervisor-crashmail with a file sink and an SMTP sink (a real local
  SMTP server, aiosmtpd, receives its mail) and supervisor-exporter;
- superlance 2.0.0: memmon and crashmail (mailing through a sendmail stand-in).
After ``--settle`` seconds of crashes and ticks, it prints each listener's RSS and PSS (read
from /proc by psutil) and the totals of each side as a ratio. PSS is the fair figure: it splits
pages shared with the workers' interpreters, as the kernel's accounting does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, wait_for

ROOT = str(Path(__file__).resolve().parents[1])

OURS = ("memmon", "crashmail", "exporter")
THEIRS = ("superlance_memmon", "superlance_crashmail")


class Sink:
    """Counts the mail crashmail delivers; the content is not needed here."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.count += 1
        return "250 OK"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--settle", type=float, default=20.0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sl-bench-mem-"))
    smtp = Sink()
    port = free_port()
    controller = Controller(smtp, hostname="127.0.0.1", port=port)
    controller.start()
    sink = f"smtp://127.0.0.1:{port}?from=crashmail@example.invalid&to=ops@example.invalid&tls=none"
    crashmail_flags = f"--sink file:{tmp}/alerts.jsonl --sink '{sink}' --outbox {tmp}/outbox.sqlite"
    sup = Supervisord(
        f"""
        [program:steady]
        command={PYTHON} {WORKER} steady
        numprocs={args.workers}
        process_name=%(program_name)s_%(process_num)03d
        startsecs=1

        [program:crasher]
        command={PYTHON} {WORKER} crash --after 3 --code 3
        startsecs=1
        autorestart=true

        [eventlistener:memmon]
        command={PYTHON} -m listeners.memmon -a 256MB --measure pss --interval 1
        events=PROCESS_STATE,TICK_5
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"

        [eventlistener:crashmail]
        command={PYTHON} -m listeners.crashmail {crashmail_flags}
        events=PROCESS_STATE,REMOTE_COMMUNICATION,TICK_60
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"

        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{free_port()}
        events=PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,SUPERVISOR_STATE_CHANGE
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"

        [eventlistener:superlance_memmon]
        command={PYTHON} -m superlance.memmon -a 256MB
        events=TICK_5
        buffer_size=1024

        [eventlistener:superlance_crashmail]
        command={PYTHON} -m superlance.crashmail -a -m ops@example.invalid -s 'cat >/dev/null'
        events=PROCESS_STATE_EXITED
        buffer_size=1024
        """,
    )
    sup.start(timeout=120)
    try:
        sup.wait_all("RUNNING", timeout=300)
        print(f"workers running: {args.workers} steady + 1 crashing every ~3 s")
        time.sleep(args.settle)
        wait_for(lambda: smtp.count > 0, 60, what="crashmail's first mail")
        print(f"mail received from supervisor-crashmail: {smtp.count}")
        print()
        print(f"own memory of each listener at {args.workers} workers")
        totals = {"ours": [0, 0], "superlance": [0, 0]}
        for name in (*OURS, *THEIRS):
            proc = psutil.Process(sup.info(f"{name}:{name}")["pid"])
            full = proc.memory_full_info()
            side = "ours" if name in OURS else "superlance"
            totals[side][0] += full.rss
            totals[side][1] += full.pss
            label = name.replace("_", " ") if side == "superlance" else f"supervisor-{name}"
            print(
                f"  {label:22s}: RSS {full.rss / 2**20:6.1f} MiB  PSS {full.pss / 2**20:6.1f} MiB"
            )
        ours, theirs = totals["ours"], totals["superlance"]
        print()
        print(
            f"  {'ours, 3 listeners':22s}: RSS {ours[0] / 2**20:6.1f} MiB  "
            f"PSS {ours[1] / 2**20:6.1f} MiB"
        )
        print(
            f"  {'superlance, 2':22s}: RSS {theirs[0] / 2**20:6.1f} MiB  "
            f"PSS {theirs[1] / 2**20:6.1f} MiB"
        )
        print(f"  PSS ours / superlance : {ours[1] / theirs[1]:.2f}x")
        print("  (goal: supervisor-crashmail PSS <= 20 MB = 19.07 MiB, file and SMTP sinks)")
    finally:
        sup.cleanup()
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
