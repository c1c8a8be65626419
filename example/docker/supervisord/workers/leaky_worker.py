"""Simulated leaking worker: keeps a little of every job in memory, forever."""

import argparse
import time

CHUNK = 256 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb-per-second", type=float, default=1.0)
    parser.add_argument(
        "--max-mb", type=float, default=48.0, help="stop growing here (so nothing runs away)"
    )
    args = parser.parse_args()
    kept = []
    # one 256 KiB block every `pause` seconds is mb_per_second MiB a second
    pause = CHUNK / (args.mb_per_second * 1024 * 1024)
    while True:
        if len(kept) * CHUNK >= args.max_mb * 1024 * 1024:
            time.sleep(1)
            continue
        block = bytearray(CHUNK)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it counts in RSS
        kept.append(block)
        time.sleep(pause)


if __name__ == "__main__":
    main()
