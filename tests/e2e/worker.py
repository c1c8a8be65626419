"""A worker process for e2e tests; one script, several behaviours.

python worker.py steady                 sleep forever (about 8-10 MB, like a mail sender)
python worker.py leak --mb-per-s 8      grow by N MB a second
python worker.py crash --after 1.5 --code 3   exit with a status after a while
python worker.py chatty --lines 100     write non-ASCII lines to stdout, then sleep
python worker.py child-leak --mb-per-s 8      spawn a child that leaks; stay small itself
python worker.py slow-stop --delay 10   ignore SIGTERM for a while before exiting
python worker.py exit0 --after 1        exit 0 (an expected exit) after a while
python worker.py bus-record --out FILE  an event listener that appends the data of every
                                        REMOTE_COMMUNICATION event to FILE, one per line
python worker.py crash-until --flag F --after 1.5 --code 3 [--touch]
                                        crash like `crash` unless file F exists (then steady);
                                        --touch creates F first, so it crashes only once
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def steady() -> None:
    while True:
        time.sleep(3600)


def leak(mb_per_s: float, stop_at_mb: float) -> None:
    hoard = []
    step = 0.1
    while True:
        if len(hoard) * 0.25 < stop_at_mb:
            for _ in range(max(1, int(mb_per_s * step / 0.25))):
                hoard.append(bytearray(256 * 1024))
                hoard[-1][::4096] = b"x" * len(hoard[-1][::4096])
        time.sleep(step)


def bus_record(path: str) -> None:
    from listeners.core import protocol

    class BusRecorder(protocol.Handler):
        def handle(self, event: protocol.Event) -> None:
            if isinstance(event, protocol.RemoteCommunicationEvent):
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(event.type + " " + event.data.replace("\n", " ") + "\n")

    sys.exit(protocol.run(BusRecorder()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--after", type=float, default=1.0)
    parser.add_argument("--code", type=int, default=1)
    parser.add_argument("--mb-per-s", type=float, default=8.0)
    parser.add_argument("--stop-at-mb", type=float, default=512.0)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--delay", type=float, default=10.0)
    parser.add_argument("--out", default="", help="bus-record: where to append messages")
    parser.add_argument("--stderr", default="", help="text written to stderr before a crash")
    parser.add_argument("--flag", default="", help="crash-until: a file that means fixed")
    parser.add_argument("--touch", action="store_true", help="crash-until: create --flag first")
    args = parser.parse_args()
    if args.mode == "steady":
        steady()
    elif args.mode == "leak":
        leak(args.mb_per_s, args.stop_at_mb)
    elif args.mode in ("crash", "exit0"):
        time.sleep(args.after)
        if args.stderr:
            sys.stderr.write(args.stderr + "\n")
            sys.stderr.flush()
        sys.exit(0 if args.mode == "exit0" else args.code)
    elif args.mode == "crash-until":
        if args.flag and os.path.exists(args.flag):
            steady()
        time.sleep(args.after)
        if args.touch:
            open(args.flag, "a").close()
        sys.stderr.write((args.stderr or "crash-until: failing") + "\n")
        sys.stderr.flush()
        sys.exit(args.code)
    elif args.mode == "chatty":
        for i in range(args.lines):
            sys.stdout.write(f"line {i} naïve café ✓ 日本 len:5 key:value\n")
        sys.stdout.flush()
        steady()
    elif args.mode == "child-leak":
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "leak",
                "--mb-per-s",
                str(args.mb_per_s),
                "--stop-at-mb",
                str(args.stop_at_mb),
            ]
        )
        signal.signal(signal.SIGTERM, lambda *_: (child.terminate(), sys.exit(0)))
        child.wait()
    elif args.mode == "slow-stop":
        asked: list[float] = []
        signal.signal(signal.SIGTERM, lambda *_: asked.append(time.monotonic()))
        while not asked or time.monotonic() - asked[0] < args.delay:
            time.sleep(0.05)
        sys.exit(0)
    elif args.mode == "bus-record":
        bus_record(args.out)
    else:
        parser.error(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
