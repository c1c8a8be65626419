"""Simulated broken worker: starts fine, then fails on its first job, again and again."""

import argparse
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crash-after", type=float, default=4.0)
    args = parser.parse_args()
    print("connecting to the webhook endpoint", flush=True)
    time.sleep(args.crash_after)
    sys.stderr.write("error: webhook endpoint answered 503 Service Unavailable; giving up\n")
    sys.exit(3)


if __name__ == "__main__":
    main()
