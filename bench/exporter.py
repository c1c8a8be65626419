"""Scrape latency and supervisord CPU per scrape: supervisor-exporter vs node_exporter.

    python bench/exporter.py [--workers 256,1000] [--scrapes 30]
    python bench/exporter.py --page [--workers 1000] [--scrapes 30] [--render-only]

With ``--page``: the status page (``/``) and its JSON (``/api/status``) against supervisord's
own 8080 dashboard at the same number of workers, over HTTP, plus the pure render time of the
page and the JSON in this process (no HTTP, no /proc).

For each worker count, one real supervisord (unix socket plus an inet_http_server on
loopback, since node_exporter speaks http:// only) runs N tiny workers and our exporter as
an event listener; prometheus-node-exporter runs with only its supervisord collector. Each
exporter is scraped in turn; supervisord's utime+stime from /proc/<pid>/stat is read
before and after, so the CPU it spent answering (node_exporter calls getAllProcessInfo on
every scrape) shows up per scrape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.support import PYTHON, Supervisord, free_port, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - loopback http
        return str(resp.read().decode())


def series_per_process(text: str, n: int) -> float:
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and 'name="w_' in ln]
    return len(lines) / n


def measure(url: str, sup_pid: int, scrapes: int) -> dict[str, float]:
    for _ in range(3):
        text = fetch(url)
    latencies = []
    cpu0 = cpu_seconds(sup_pid)
    for _ in range(scrapes):
        t0 = time.perf_counter()
        text = fetch(url)
        latencies.append(time.perf_counter() - t0)
    cpu1 = cpu_seconds(sup_pid)
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p90_ms": sorted(latencies)[int(len(latencies) * 0.9) - 1] * 1000,
        "sup_cpu_ms": (cpu1 - cpu0) / scrapes * 1000,
        "bytes": len(text),
        "text": text,  # type: ignore[dict-item]
    }


def run(n: int, scrapes: int) -> None:
    http_port, exp_port, node_port = free_port(), free_port(), free_port()
    sup = Supervisord(
        f"""
        [program:w]
        command=sleep 1000000
        numprocs={n}
        process_name=%(program_name)s_%(process_num)04d
        startsecs=0

        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{exp_port}
        events=PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,SUPERVISOR_STATE_CHANGE
        buffer_size=4096
        environment=PYTHONPATH="{ROOT}"
        """,
        extra_conf=f"""
        [inet_http_server]
        port=127.0.0.1:{http_port}
        """,
    )
    sup.conf.write_text(sup.conf.read_text().replace("minfds=1024", "minfds=8192"))
    node = None
    try:
        sup.start()
        sup.wait_all("RUNNING", timeout=300)
        assert sup.proc is not None
        sup_pid = sup.proc.pid
        exp_url = f"http://127.0.0.1:{exp_port}/metrics"
        wait_for(lambda: f'name="w_{n - 1:04d}",state="RUNNING"}} 1' in fetch(exp_url), 120)
        node = subprocess.Popen(
            [
                "prometheus-node-exporter",
                "--collector.disable-defaults",
                "--collector.supervisord",
                f"--collector.supervisord.url=http://127.0.0.1:{http_port}/RPC2",
                f"--web.listen-address=127.0.0.1:{node_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(sup.dir / "node_exporter.log", "wb"),  # noqa: SIM115 - lives with node
        )
        node_url = f"http://127.0.0.1:{node_port}/metrics"
        try:
            wait_for(
                lambda: (
                    'node_scrape_collector_success{collector="supervisord"} 1' in fetch(node_url)
                ),
                60,
            )
        except AssertionError:
            print((sup.dir / "node_exporter.log").read_text()[-2000:])
            raise
        idle0 = cpu_seconds(sup_pid)
        time.sleep(5)
        idle_ms_per_s = (cpu_seconds(sup_pid) - idle0) / 5 * 1000
        ours = measure(exp_url, sup_pid, scrapes)
        theirs = measure(node_url, sup_pid, scrapes)
        # memmon announces PSS ceilings (the example's --measure pss): each scrape then also
        # reads every worker's smaps_rollup, to compare the ceiling with what memmon judges
        from listeners.core import bus

        limits = bus.MemoryLimits("h", {f"w:w_{i:04d}": 16 << 20 for i in range(n)}, "pss")
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(limits))
        wait_for(lambda: "supervisord_process_memory_judged_bytes{" in fetch(exp_url), 60)
        judged = measure(exp_url, sup_pid, scrapes)
        exp_pid = int(sup.info("exporter:exporter")["pid"])
        rss, pss = memory(exp_pid)
        s_ours = series_per_process(str(ours["text"]), n)
        s_theirs = series_per_process(str(theirs["text"]), n)
        print(f"\n{n} workers, {scrapes} scrapes each (after 3 warm-up scrapes)")
        print(f"{'':34}{'supervisor-exporter':>22}{'node_exporter':>16}{'ratio':>10}")
        rows = [
            ("median scrape (ms)", ours["median_ms"], theirs["median_ms"]),
            ("  with memmon's PSS ceilings (ms)", judged["median_ms"], theirs["median_ms"]),
            ("p90 scrape (ms)", ours["p90_ms"], theirs["p90_ms"]),
            ("supervisord CPU per scrape (ms)", ours["sup_cpu_ms"], theirs["sup_cpu_ms"]),
            ("series per process", s_ours, s_theirs),
            ("response size (KiB)", ours["bytes"] / 1024, theirs["bytes"] / 1024),
        ]
        for label, a, b in rows:
            ratio = (b / a if a else float("inf")) if "series" not in label else a / b
            print(f"{label:34}{a:>22.2f}{b:>16.2f}{ratio:>9.1f}x")
        print(f"{'exporter RSS / PSS (MiB)':34}{rss / 2**20:>15.1f} / {pss / 2**20:.1f}")
        print(f"{'supervisord idle CPU (ms per s)':34}{idle_ms_per_s:>22.2f}")
        print("(ratio: node_exporter / ours for times and sizes, ours / node_exporter for series)")
    finally:
        if node is not None:
            node.terminate()
            node.wait(10)
        sup.cleanup()


def render_in_process(n: int, rounds: int = 30) -> dict[str, float]:
    """Median ms to render the page and the JSON from a snapshot of ``n`` processes."""
    from listeners.metrics.api import status_json
    from listeners.metrics.page import Viewer, render_status_page
    from listeners.metrics.snapshot import ProcessView, Snapshot, Usage

    now = time.time()
    procs = tuple(
        ProcessView(
            "w",
            f"w_{i:04d}",
            "RUNNING" if i % 50 else "BACKOFF",
            1000 + i,
            now - i,
            None,
            i % 7,
            i % 3,
            0,
            16 << 20,
            i % 2,
            i % 97 == 0,
            planned_exits=i % 11,
        )
        for i in range(n)
    )
    snap = Snapshot(True, "4.3.0", "bench", procs, 0, 0, 0)
    usages = {p.full_name: Usage((8 << 20) + i, 1.0) for i, p in enumerate(procs)}
    viewer = Viewer("op", "0" * 64)
    out = {}
    for label, fn in (
        ("page", lambda: render_status_page(snap, usages, "http://x/", now, viewer)),
        ("json", lambda: status_json(snap, usages, now)),
    ):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times) * 1000
    return out


def run_page(n: int, requests: int) -> None:
    http_port, exp_port = free_port(), free_port()
    sup = Supervisord(
        f"""
        [program:w]
        command=sleep 1000000
        numprocs={n}
        process_name=%(program_name)s_%(process_num)04d
        startsecs=0

        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{exp_port}
        events=PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,SUPERVISOR_STATE_CHANGE
        buffer_size=4096
        environment=PYTHONPATH="{ROOT}"
        """,
        extra_conf=f"""
        [inet_http_server]
        port=127.0.0.1:{http_port}
        """,
    )
    sup.conf.write_text(sup.conf.read_text().replace("minfds=1024", "minfds=8192"))
    try:
        sup.start(timeout=180)
        sup.wait_all("RUNNING", timeout=300)
        assert sup.proc is not None
        base = f"http://127.0.0.1:{exp_port}"
        wait_for(
            lambda: f'name="w_{n - 1:04d}",state="RUNNING"}} 1' in fetch(base + "/metrics"), 120
        )
        page = measure(base + "/", sup.proc.pid, requests)
        api = measure(base + "/api/status", sup.proc.pid, requests)
        dash = measure(f"http://127.0.0.1:{http_port}/", sup.proc.pid, requests)
        local = render_in_process(n)
        print(f"\n{n} workers, {requests} requests each (after 3 warm-up requests)")
        print(f"{'':34}{'status page':>14}{'/api/status':>14}{'8080 dashboard':>16}")
        for label, key in (
            ("median request (ms)", "median_ms"),
            ("p90 request (ms)", "p90_ms"),
            ("supervisord CPU per request (ms)", "sup_cpu_ms"),
        ):
            print(f"{label:34}{page[key]:>14.2f}{api[key]:>14.2f}{dash[key]:>16.2f}")
        sizes = (page["bytes"] / 1024, api["bytes"] / 1024, dash["bytes"] / 1024)
        print(f"{'response size (KiB)':34}{sizes[0]:>14.1f}{sizes[1]:>14.1f}{sizes[2]:>16.1f}")
        print(f"{'render in process (ms, median)':34}{local['page']:>14.2f}{local['json']:>14.2f}")
    finally:
        sup.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="256,1000")
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--page", action="store_true", help="the status page and its JSON")
    parser.add_argument(
        "--render-only", action="store_true", help="with --page: only the in-process render"
    )
    args = parser.parse_args()
    for n in (int(x) for x in args.workers.split(",")):
        if args.page and args.render_only:
            local = render_in_process(n)
            print(f"{n} processes: page {local['page']:.2f} ms, JSON {local['json']:.2f} ms")
        elif args.page:
            run_page(n, args.scrapes)
        else:
            run(n, args.scrapes)


if __name__ == "__main__":
    main()
