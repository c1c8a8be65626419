"""Benchmark: crash -> alert latency and the 200-crash storm, crashmail beside superlance.

One real supervisord per scenario runs three listeners side by side: ours (SMTP + webhook
sinks), superlance crashmail (its -s points at a script that forwards the mail to the same SMTP
server) and superlance crashmailbatch (SMTP, TICK_5, shortest interval). A real aiosmtpd server
and a real HTTP receiver record arrival times.

    python bench/crashmail.py [--crashes 20] [--storm 200]
"""

from __future__ import annotations

import argparse
import email
import json
import socket
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

from tests.e2e.support import PYTHON, Supervisord, wait_for  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def listeners(tmp: Path, smtp_port: int, hook: str, buffer_size: int, burst: int = 5) -> str:
    fwd = tmp / "sendmail_fwd.py"
    fwd.write_text(FORWARD.format(port=smtp_port))
    sink = f"smtp://127.0.0.1:{smtp_port}?from=crashmail@example.com&to=ops@example.com"
    return textwrap.dedent(f"""
    [eventlistener:crashmail]
    command={PYTHON} -m listeners.crashmail --sink '{sink}' --sink webhook+{hook}
        --outbox {tmp}/outbox.sqlite --coalesce 30s --burst {burst}
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


def latency(args: argparse.Namespace, inbox: Inbox, hook_srv: Any, smtp_port: int) -> None:
    n = args.crashes
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
    sup.write_conf(programs + listeners(sup.dir, smtp_port, hook, 1024, burst=1000))
    sup.start()
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
        sup.cleanup()
    print(f"\nLatency from crash to alert, {n} crashes one after another (seconds)")
    print(f"{'listener':28} {'delivered':>9} {'median':>8} {'p90':>8} {'max':>8}")
    base = statistics.median(results["crashmail smtp"])
    for label, vals in results.items():
        if not vals:
            print(f"{label:28} {0:>9}")
            continue
        vals.sort()
        med = statistics.median(vals)
        p90 = vals[int(0.9 * (len(vals) - 1))]
        print(
            f"{label:28} {len(vals):>9} {med:8.3f} {p90:8.3f} {vals[-1]:8.3f}"
            f"   x{med / base:.2f} of crashmail smtp"
        )
    if own:
        print(
            f"crashmail's own part (event received -> SMTP accepted): median"
            f" {statistics.median(own):.3f}s. The rest is supervisord: it dispatches an EXITED"
            " event after its next poll, up to 1 s later when nothing else wakes it."
        )


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
    args = parser.parse_args()
    inbox = Inbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    hook_srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    hook_srv.got = []  # type: ignore[attr-defined]
    threading.Thread(target=hook_srv.serve_forever, daemon=True).start()
    try:
        latency(args, inbox, hook_srv, smtp_port)
        storm(args, inbox, hook_srv, smtp_port)
    finally:
        controller.stop()
        hook_srv.shutdown()


if __name__ == "__main__":
    main()
