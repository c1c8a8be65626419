"""Simulated queue consumer: handles a batch of jobs, then exits 0 to be started fresh."""

import argparse
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seconds-per-job", type=float, default=0.5)
    args = parser.parse_args()
    for job in range(1, args.batch + 1):
        time.sleep(args.seconds_per_job * random.uniform(0.5, 1.5))
        if job % 10 == 0:
            print(f"consumed {job} jobs", flush=True)
    print("batch done, exiting to start fresh", flush=True)


if __name__ == "__main__":
    main()
