"""Benchmark: crash -> alert latency and the 200-crash storm, crashmail beside superlance.

One real supervisord per scenario runs three listeners side by side: ours (SMTP + webhook
sinks), superlance crashmail (its -s points at a script that forwards the mail to the same SMTP
server) and superlance crashmailbatch (SMTP, TICK_5, shortest interval). A real aiosmtpd server
and a real HTTP receiver record arrival times.

    python bench/crashmail.py [--crashes 20] [--storm 200] [--wake 200ms] [--idle 20,256]
        [--cost-seconds 30] [--only latency|cost|storm]

Latency runs once per wake mode, each in its own supervisord with superlance beside crashmail:
crashmail --wake off, --wake interval (every --wake), --wake exit, and two runs with crashmail's
wake off and a bench-side DeathWatch (one poke, then a poke plus a second one 50 ms later) to
show what the second poke buys. The cost part reads supervisord's utime+stime from /proc with
--idle sleeping workers: no wake, the interval wake and the exit wake (a DeathWatch holding a
pidfd for every worker), then no wake again to show the noise.
"""

from __future__ import annotations

import argparse
import email
import json
import os
import statistics
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from listeners.core.supervisor import Connection, Supervisor  # noqa: E402
from listeners.core.wake import DeathWatch, Waker, connect_poke, rpc_poke  # noqa: E402
from tests.e2e.support import PYTHON, Supervisord, free_port, wait_for  # noqa: E402

FORWARD = """\
import smtplib, sys
data = sys.stdin.buffer.read()
with smtplib.SMTP("127.0.0.1", {port}, timeout=10) as s:
    s.sendmail("superlance@example.com", ["ops@example.com"],
               b"X-Bench-Source: superlance-crashmail\\n" + data)
"""


# Records its crash time, then exits 3 (after startsecs, so EXITED expected:0).
LAT_WORKER = """\
import sys, time
time.sleep(1.2)
with open(sys.argv[1], "w") as f:
    f.write(repr(time.time()))
sys.exit(3)
"""


class Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[float, Any]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.mails.append((time.time(), email.message_from_bytes(envelope.content)))
        return "250 OK"

    def source(self, msg: Any) -> str:
        if msg["X-Supervisor-Alert-Key"]:
            return "crashmail"
        if msg["X-Bench-Source"]:
            return "superlance-crashmail"
        return "superlance-crashmailbatch"

    def by(self, source: str) -> list[tuple[float, Any]]:
        with self.lock:
            return [(t, m) for t, m in self.mails if self.source(m) == source]


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.got.append((time.time(), body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def listeners(
    tmp: Path,
    smtp_port: int,
    hook: str,
    buffer_size: int,
    burst: int = 5,
    wake: str = "--wake exit",
) -> str:
    fwd = tmp / "sendmail_fwd.py"
    fwd.write_text(FORWARD.format(port=smtp_port))
    sink = f"smtp://127.0.0.1:{smtp_port}?from=crashmail@example.com&to=ops@example.com"
    return textwrap.dedent(f"""
    [eventlistener:crashmail]
    command={PYTHON} -m listeners.crashmail --sink '{sink}' --sink webhook+{hook}
        --outbox {tmp}/outbox.sqlite --coalesce 30s --burst {burst} {wake}
    events=PROCESS_STATE,REMOTE_COMMUNICATION
    buffer_size={buffer_size}
    environment=PYTHONPATH="{REPO}"

    [eventlistener:superlance_crashmail]
    command={PYTHON} -m superlance.crashmail -a -m ops@example.com -s "{PYTHON} {fwd}"
    events=PROCESS_STATE
    buffer_size={buffer_size}

    [eventlistener:superlance_batch]
    command={PYTHON} -m superlance.crashmailbatch -t ops@example.com -f b@example.com
        -s crashmailbatch -H 127.0.0.1:{smtp_port} -e TICK_5 -i 0.0833
    events=PROCESS_STATE,TICK_5
    buffer_size={buffer_size}
    """)


def latency(
    args: argparse.Namespace,
    inbox: Inbox,
    hook_srv: Any,
    smtp_port: int,
    wake: str,
    repoke: float | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
    """One supervisord, ``--crashes`` crashes one after another; crashmail with ``wake`` flags.

    ``repoke`` not None: a DeathWatch in this process (with that second-poke delay) watches each
    worker once it is RUNNING, standing in for crashmail's own exit wake.
    """
    n = args.crashes
    with inbox.lock:
        inbox.mails.clear()
    hook_srv.got.clear()
    tmp_marks = []
    programs = ""
    for i in range(n):
        programs += textwrap.dedent(f"""
        [program:lat{i:02d}]
        command={PYTHON} %(here)s/lat.py %(here)s/lat{i:02d}.t
        autostart=false
        autorestart=false
        startsecs=1
        """)
    hook = f"http://127.0.0.1:{hook_srv.server_address[1]}/hook"
    sup = Supervisord("")
    (sup.dir / "lat.py").write_text(LAT_WORKER)
    # Every crash here is a first crash: lift the burst limit so none waits for a summary.
    sup.write_conf(programs + listeners(sup.dir, smtp_port, hook, 1024, burst=1000, wake=wake))
    sup.start()
    watch = None
    if repoke is not None:
        watch = DeathWatch(connect_poke(sup.url), repoke=repoke)
        watch.start()
    try:
        time.sleep(3)
        results: dict[str, list[float]] = {
            "crashmail smtp": [],
            "crashmail webhook": [],
            "superlance crashmail": [],
            "superlance crashmailbatch": [],
        }
        for i in range(n):
            name = f"lat{i:02d}"
            sup.client.start(f"{name}:{name}", wait=True)
            if watch is not None:
                watch.watch({name: sup.info(f"{name}:{name}")["pid"]})
            mark = sup.dir / f"{name}.t"
            wait_for(mark.exists, 20, what=f"{name} crash")
            time.sleep(0.05)
            t_crash = float(mark.read_text())
            tmp_marks.append(t_crash)

            def arrived(src: str, name: str = name) -> float | None:
                for t, m in inbox.by(src):
                    if name in (m["Subject"] or "") or name in str(m.get_payload()):
                        return t
                return None

            def hooked(name: str = name) -> float | None:
                for t, b in list(hook_srv.got):
                    if b.get("name") == name:
                        return float(t)
                return None

            wait_for(
                lambda: arrived("crashmail") and arrived("superlance-crashmail") and hooked(),
                30,
                what=f"{name} alerts",
            )
            results["crashmail smtp"].append(arrived("crashmail") - t_crash)  # type: ignore[operator]
            results["crashmail webhook"].append(hooked() - t_crash)  # type: ignore[operator]
            results["superlance crashmail"].append(arrived("superlance-crashmail") - t_crash)  # type: ignore[operator]
        # crashmailbatch sends every ~5 s; give it one more period, then match each crash.
        time.sleep(7)
        for i, t_crash in enumerate(tmp_marks):
            name = f"lat{i:02d}"
            for t, m in inbox.by("superlance-crashmailbatch"):
                if name in str(m.get_payload()):
                    results["superlance crashmailbatch"].append(t - t_crash)
                    break
        own = outbox_latency(sup.dir / "outbox.sqlite")
    finally:
        if watch is not None:
            watch.stop()
        sup.cleanup()
    return results, own


def stats(vals: list[float]) -> tuple[float, float, float]:
    vals = sorted(vals)
    return statistics.median(vals), vals[int(0.9 * (len(vals) - 1))], vals[-1]


def print_latency(n: int, runs: list[tuple[str, dict[str, list[float]]]], own: list[float]) -> None:
    print(f"\nLatency from crash to alert, {n} crashes one after another (seconds)")
    print(f"{'wake':34} {'listener':26} {'n':>3} {'median':>7} {'p90':>7} {'max':>7} {'ratio':>6}")
    base = statistics.median(runs[0][1]["crashmail smtp"])
    for wake, res in runs:
        for label in ("crashmail smtp", "crashmail webhook", "superlance crashmail"):
            vals = res[label]
            if not vals:
                print(f"{wake:34} {label:26} {0:>3}")
                continue
            med, p90, top = stats(vals)
            print(
                f"{wake:34} {label:26} {len(vals):>3} {med:7.3f} {p90:7.3f} {top:7.3f}"
                f" {med / base:6.2f}"
            )
    batch = runs[0][1]["superlance crashmailbatch"]
    if batch:
        med, p90, top = stats(batch)
        print(
            f"{runs[0][0]:34} {'superlance crashmailbatch':26} {len(batch):>3} {med:7.3f}"
            f" {p90:7.3f} {top:7.3f} {med / base:6.2f}"
        )
    print(
        "ratio: median / median of crashmail smtp with the wake off. superlance crashmail ran"
        " beside crashmail in the same supervisord: a wake hurries every listener."
    )
    if own:
        print(
            f"crashmail's own part (event received -> SMTP accepted): median"
            f" {statistics.median(own):.3f}s. Without a wake the rest is supervisord: it hands"
            " a buffered EXITED event to listeners after its next poll, 1 s later when nothing"
            " else wakes it."
        )


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wake_cost(args: argparse.Namespace, n: int) -> None:
    """supervisord's CPU with ``n`` sleeping workers: no wake, interval wakes, the exit wake."""
    seconds = args.cost_seconds
    sup = Supervisord(
        textwrap.dedent(f"""
        [program:idle]
        command=sleep 86400
        numprocs={n}
        process_name=%(program_name)s_%(process_num)03d
        startsecs=0
        stdout_logfile=NONE
        stderr_logfile=NONE
        """)
    )
    sup.start()
    assert sup.proc is not None
    pid = sup.proc.pid

    def interval(seconds: float, poke: Any) -> Any:
        return lambda: Waker(poke, seconds)

    def exit_watch() -> Any:
        watch = DeathWatch(connect_poke(sup.url))
        infos = sup.client.all_process_info()
        watch.watch({f"{i['group']}:{i['name']}": i["pid"] for i in infos})
        return watch

    modes: list[tuple[str, Any]] = [
        ("off", None),
        ("exit (pidfds, nothing dies)", exit_watch),
        ("interval, connect every 200ms", interval(0.2, connect_poke(sup.url))),
    ]
    if args.all_pokes:
        rpc = Supervisor(Connection(url=sup.url, timeout=2))
        modes += [
            ("interval, connect every 100ms", interval(0.1, connect_poke(sup.url))),
            ("interval, getAPIVersion 200ms", interval(0.2, rpc_poke(rpc))),
        ]
    modes.append(("off (again)", None))
    rows = []
    try:
        sup.wait_all("RUNNING", timeout=60)
        time.sleep(2)
        for label, make in modes:
            waker = make() if make is not None else None
            if waker is not None:
                waker.start()
            time.sleep(1)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            c1, t1 = cpu_seconds(pid), time.monotonic()
            extra = ""
            if isinstance(waker, DeathWatch):
                extra = f" ({len(waker.held())} pidfds)"
            if waker is not None:
                waker.stop()
            rows.append((label + extra, 100 * (c1 - c0) / (t1 - t0), waker.pokes if waker else 0))
    finally:
        sup.cleanup()
    print(f"\nsupervisord CPU with {n} idle workers, {seconds:g}s per mode (% of one core)")
    print(f"{'wake':40} {'CPU %':>8} {'extra':>8} {'wakes':>7}")
    base = rows[0][1]
    for label, pct, pokes in rows:
        print(f"{label:40} {pct:8.3f} {pct - base:8.3f} {pokes:>7}")


def outbox_latency(path: Path) -> list[float]:
    import sqlite3

    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT d.delivered_at - i.created FROM deliveries d JOIN incidents i"
            " ON i.message_id = d.message_id WHERE d.sink LIKE 'smtp:%' AND d.delivered_at"
        ).fetchall()
    return [float(r[0]) for r in rows]


def storm(args: argparse.Namespace, inbox: Inbox, hook_srv: Any, smtp_port: int) -> None:
    n = args.storm
    with inbox.lock:
        inbox.mails.clear()
    hook_srv.got.clear()
    programs = textwrap.dedent(f"""
    [program:storm]
    command=/bin/sh -c "sleep 4; exit 3"
    numprocs={n}
    process_name=%(program_name)s_%(process_num)03d
    startsecs=1
    autorestart=false
    stdout_logfile=NONE
    stderr_logfile=NONE
    """)
    hook = f"http://127.0.0.1:{hook_srv.server_address[1]}/hook"
    sup = Supervisord("")
    sup.write_conf(programs + listeners(sup.dir, smtp_port, hook, 4 * n + 200))
    names = {f"storm_{i:03d}" for i in range(n)}
    sup.start()
    t0 = time.time()
    try:

        def ours() -> set[str]:
            found: set[str] = set()
            for _, m in inbox.by("crashmail"):
                text = f"{m['Subject']}\n{m.get_payload()}"
                found |= {x for x in names if x in text}
            return found

        def theirs(src: str) -> set[str]:
            found: set[str] = set()
            for _, m in inbox.by(src):
                text = f"{m['Subject']}\n{m.get_payload()}"
                found |= {x for x in names if x in text}
            return found

        try:
            wait_for(lambda: len(ours()) == n, 120, what="crashmail names all")
        except AssertionError as exc:
            print(f"  crashmail did not name all: {exc}")
        t_ours = time.time() - t0
        deadline = time.time() + 60
        while time.time() < deadline and (
            len(theirs("superlance-crashmail")) < n or len(theirs("superlance-crashmailbatch")) < n
        ):
            time.sleep(0.5)
        overflowed = sup.log_text().count("overflowed")
    finally:
        sup.cleanup()
    print(f"\nStorm: {n} workers crash at once (buffer_size={4 * n + 200} for every listener)")
    print(f"{'listener':28} {'processes named':>16} {'messages':>9}")
    for label, src in (
        ("crashmail (smtp)", "crashmail"),
        ("superlance crashmail", "superlance-crashmail"),
        ("superlance crashmailbatch", "superlance-crashmailbatch"),
    ):
        found = ours() if src == "crashmail" else theirs(src)
        print(f"{label:28} {len(found):>12}/{n} {len(inbox.by(src)):>9}")
    print(
        f"crashmail webhook posts: {len(hook_srv.got)}; all named after {t_ours:.1f}s"
        f" (from supervisord start; workers crash at ~4s); supervisord 'overflowed' lines:"
        f" {overflowed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crashes", type=int, default=20)
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument("--wake", default="200ms", help="the interval mode's --wake-interval")
    parser.add_argument(
        "--idle", default="20,256", help="idle workers for the CPU cost, comma-separated counts"
    )
    parser.add_argument(
        "--all-pokes", action="store_true", help="cost: also a 100ms connect and getAPIVersion"
    )
    parser.add_argument("--cost-seconds", type=float, default=30.0, help="per wake mode")
    parser.add_argument("--only", choices=["latency", "cost", "storm"], action="append")
    args = parser.parse_args()
    inbox = Inbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    hook_srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    hook_srv.got = []  # type: ignore[attr-defined]
    threading.Thread(target=hook_srv.serve_forever, daemon=True).start()
    try:
        parts = args.only or ["latency", "cost", "storm"]
        if "latency" in parts:
            runs: list[tuple[str, dict[str, list[float]]]] = []
            own: list[float] = []
            for label, flags, repoke in (
                ("off", "--wake off", None),
                (f"interval {args.wake}", f"--wake interval --wake-interval {args.wake}", None),
                ("exit (crashmail --wake exit)", "--wake exit", None),
                ("exit, one poke (bench-side)", "--wake off", 0.0),
                ("exit, poke + 50ms (bench-side)", "--wake off", 0.05),
            ):
                res, own_part = latency(args, inbox, hook_srv, smtp_port, flags, repoke)
                runs.append((label, res))
                if flags == "--wake exit":
                    own = own_part
            print_latency(args.crashes, runs, own)
        if "cost" in parts:
            for n in (int(x) for x in args.idle.split(",")):
                wake_cost(args, n)
        if "storm" in parts:
            storm(args, inbox, hook_srv, smtp_port)
    finally:
        controller.stop()
        hook_srv.shutdown()


if __name__ == "__main__":
    main()
