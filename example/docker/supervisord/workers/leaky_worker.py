"""Simulated leaking worker: keeps a little of every job in memory, forever."""

import argparse
import time

CHUNK = 256 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb-per-second", type=float, default=1.0)
    args = parser.parse_args()
    kept = []
    per_tick = max(1, round(args.mb_per_second * 1024 * 1024 / CHUNK / 10))
    while True:
        for _ in range(per_tick):
            block = bytearray(CHUNK)
            block[::4096] = b"x" * len(block[::4096])  # touch every page so it counts in RSS
            kept.append(block)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
