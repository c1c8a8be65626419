"""The example image: its size, and the time from `docker run` to healthy, and to stopped.

Runs on scripts/docker-local.sh's private dockerd (as root), building the image first if
needed. Run: python bench/docker.py [--runs N]. Figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "docker-local.sh"
IMAGE = "supervisor-listeners-example:bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def one_run(env: dict[str, str]) -> tuple[float, float]:
    """Seconds from `docker run` to healthy, and of `docker stop`."""
    t0 = time.monotonic()
    name = docker(
        env, "run", "-d", "--network", "host",
        "-e", f"EXPORTER_ADDRESS=127.0.0.1:{free_port()}",
        "-e", f"SUPERVISOR_DASHBOARD_ADDRESS=127.0.0.1:{free_port()}",
        IMAGE,
    )  # fmt: skip
    try:
        while docker(env, "inspect", "-f", "{{.State.Health.Status}}", name) != "healthy":
            if time.monotonic() - t0 > 120:
                raise SystemExit("not healthy within 120 s")
            time.sleep(0.2)
        healthy = time.monotonic() - t0
        t1 = time.monotonic()
        docker(env, "stop", "-t", "10", name)
        return healthy, time.monotonic() - t1
    finally:
        rm = ["docker", "rm", "-f", "-v", name]
        subprocess.run(rm, env=env, capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([str(SCRIPT), "build", IMAGE], check=True, stdout=subprocess.DEVNULL)
    sock = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=True)
    env = {**os.environ, "DOCKER_HOST": sock.stdout.strip().split("=", 1)[1]}
    size = int(docker(env, "image", "inspect", "-f", "{{.Size}}", IMAGE))
    base = int(docker(env, "image", "inspect", "-f", "{{.Size}}", "python:3.11-slim-bookworm"))
    runs = [one_run(env) for _ in range(args.runs)]
    healthy = [h for h, _ in runs]
    stops = [s for _, s in runs]
    print(f"image {IMAGE}: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over its base)")
    print(
        f"docker run -> healthy: median {statistics.median(healthy):.1f} s "
        f"(min {min(healthy):.1f}, max {max(healthy):.1f}, {args.runs} runs)"
    )
    print(f"docker stop: median {statistics.median(stops):.1f} s (max {max(stops):.1f})")


if __name__ == "__main__":
    main()
