"""Simulated mail sender: one message at a time, about a second each, a few MB of memory."""

import argparse
import random
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="mail")
    parser.add_argument("--seconds-per-message", type=float, default=1.0)
    args = parser.parse_args()
    sent = 0
    while True:
        time.sleep(args.seconds_per_message * random.uniform(0.5, 1.5))
        sent += 1
        if sent % 10 == 0:
            print(f"{args.name}: sent {sent} messages", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
