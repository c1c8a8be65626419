"""crashmail against a real supervisord, a real SMTP server (aiosmtpd), a real HTTP receiver
and the real Alertmanager binary."""

from __future__ import annotations

import datetime
import email
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, wait_for

REPO = Path(__file__).parents[2]


class Inbox:
    """aiosmtpd handler that keeps every mail it accepts."""

    def __init__(self) -> None:
        self.mails: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def of_kind(self, kind: str, process: str | None = None) -> list[Message]:
        with self.lock:
            return [
                m
                for m in self.mails
                if m["X-Supervisor-Alert-Kind"] == kind
                and (process is None or process in m.get_payload())
            ]

    def texts(self) -> str:
        with self.lock:
            return "\n".join(f"{m['Subject']}\n{m.get_payload()}" for m in self.mails)


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def listener_conf(args: str, *, buffer_size: int = 1024) -> str:
    return textwrap.dedent(f"""
    [eventlistener:crashmail]
    command={PYTHON} -m listeners.crashmail {args}
    events=PROCESS_STATE,REMOTE_COMMUNICATION
    buffer_size={buffer_size}
    startsecs=1
    autorestart=true
    stderr_logfile=%(here)s/crashmail.err
    environment=PYTHONPATH="{REPO}"
    """)


def smtp_sink(port: int) -> str:
    return (
        f"'smtp://127.0.0.1:{port}?from=crashmail@example.com&to=ops@example.com,dev@example.com'"
    )


class TestCrashLoopByMail:
    def test_crash_loop_gives_one_crash_one_loop_one_resolved_and_fatal_and_no_expected_exits(
        self, supervisord, smtp, tmp_path
    ):
        """Loop after startsecs: 1 crash, 1 loop, 1 resolved mail; FATAL in one; exit 0 silent."""
        fixed = tmp_path / "fixed"
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [program:looper]
            command={PYTHON} {WORKER} crash-until --flag {fixed} --after 1.2 --code 3
                --stderr "boom <b>&"
            startsecs=1
            startretries=100
            autorestart=true

            [program:failer]
            command={PYTHON} {WORKER} crash --after 0.1 --code 2
            startsecs=1
            startretries=2
            autorestart=true

            [program:exiter]
            command={PYTHON} {WORKER} exit0 --after 0.5
            startsecs=0
            autorestart=true
            """)
            + listener_conf(
                f"--sink {smtp_sink(smtp.port)} --outbox %(here)s/outbox.sqlite"
                " --loop 3/8s --coalesce 30s --burst 20 -o [test]"
            )
        )
        inbox = smtp.inbox
        wait_for(lambda: inbox.of_kind("crash_loop", "looper"), 40, what="crash-loop mail")

        def failer_mails() -> list[Any]:
            return inbox.of_kind("crash_loop", "failer") + inbox.of_kind("fatal", "failer")

        # failed starts open one incident; FATAL right after is folded into its one alert
        wait_for(lambda: "FATAL" in " ".join(m.get_payload() for m in failer_mails()), 30,
                 what="FATAL mail")  # fmt: skip
        fixed.touch()
        wait_for(lambda: inbox.of_kind("resolved", "looper"), 40, what="resolved mail")
        time.sleep(1.0)
        crash = inbox.of_kind("crash", "looper")
        assert len(crash) == 1
        body = crash[0].get_payload()
        assert "Exit status: 3" in body
        assert "boom <b>&" in body
        # what to do next: the command that shows its output; nothing left once it is resolved
        assert "See its output: supervisorctl tail -f looper:looper stderr" in body
        assert "supervisorctl" not in inbox.of_kind("resolved", "looper")[0].get_payload()
        assert crash[0]["Subject"].startswith("[test] ")
        assert {"ops@example.com", "dev@example.com"} == {
            a.strip() for a in crash[0]["To"].split(",")
        }
        assert len(inbox.of_kind("crash_loop", "looper")) == 1
        assert len(inbox.of_kind("resolved", "looper")) == 1
        fatal = failer_mails()
        assert len(fatal) == 1
        assert "FATAL" in fatal[0].get_payload()
        assert "exiter" not in inbox.texts()
        assert sup.state("exiter:exiter") in ("RUNNING", "STARTING", "EXITED")


class TestOutboxSurvives:
    def test_smtp_down_listener_killed_supervisord_restarted_every_alert_arrives_once(
        self, supervisord, tmp_path
    ):
        """Three crashes during an SMTP outage, SIGKILL, supervisord restart: 3 mails, once each."""
        port = free_port()
        flags = [tmp_path / f"crashed-{i}" for i in range(3)]
        programs = "".join(
            textwrap.dedent(f"""
            [program:once{i}]
            command={PYTHON} {WORKER} crash-until --flag {flags[i]} --touch --after 1.2 --code 4
            startsecs=1
            autorestart=unexpected
            """)
            for i in range(3)
        )
        outbox = tmp_path / "outbox.sqlite"
        sup: Supervisord = supervisord(
            programs
            + listener_conf(
                f"--sink {smtp_sink(port)} --outbox {outbox} --retry-max 1s --coalesce 2s"
            )
        )

        def failed_deliveries() -> int:
            if not outbox.exists():
                return 0
            try:
                with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
                    return int(
                        db.execute(
                            "SELECT COUNT(*) FROM deliveries WHERE state='pending' AND attempts > 0"
                        ).fetchone()[0]
                    )
            except sqlite3.OperationalError:
                return 0  # crashmail has created the file but not yet its tables

        wait_for(lambda: failed_deliveries() >= 3, 30, what="3 failed deliveries")
        pid = sup.info("crashmail:crashmail")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                sup.info("crashmail:crashmail")["pid"] not in (0, pid)
                and sup.state("crashmail:crashmail") == "RUNNING"
            ),
            20,
            what="listener restarted",
        )
        sup.restart()
        server = SmtpServer(port).start()
        try:
            wait_for(lambda: len(server.inbox.mails) >= 3, 30, what="3 mails after recovery")
            time.sleep(3.0)  # duplicates, if any, would arrive now
            mails = list(server.inbox.mails)
        finally:
            server.stop()
        assert len(mails) == 3
        assert len({m["Message-ID"] for m in mails}) == 3
        named = sorted(
            next(p for p in ("once0", "once1", "once2") if p in m["Subject"]) for m in mails
        )
        assert named == ["once0", "once1", "once2"]
        assert {"crash"} == {m["X-Supervisor-Alert-Kind"] for m in mails}


class Receiver(BaseHTTPRequestHandler):
    bodies: list[Any]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.bodies.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[str]:
    port = free_port()
    conf = tmp_path / "am.yml"
    conf.write_text("route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n")
    (tmp_path / "am-data").mkdir()
    proc = subprocess.Popen(
        [
            "prometheus-alertmanager",
            f"--config.file={conf}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/-/ready", timeout=2).ok,
            30,
            what="alertmanager ready",
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class TestWebhookAndAlertmanager:
    def test_webhook_gets_json_and_alertmanager_fires_then_resolves_the_loop(
        self, supervisord, receiver, alertmanager, tmp_path
    ):
        """The HTTP receiver gets the crash as JSON; Alertmanager shows the loop, then not."""
        fixed = tmp_path / "fixed"
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        port = alertmanager.rsplit(":", 1)[1]
        supervisord(
            textwrap.dedent(f"""
            [program:looper]
            command={PYTHON} {WORKER} crash-until --flag {fixed} --after 1.2 --code 5
            startsecs=1
            startretries=100
            autorestart=true
            """)
            + listener_conf(
                f"--sink webhook+{hook} --sink alertmanager+http://127.0.0.1:{port}"
                " --outbox %(here)s/outbox.sqlite --loop 3/6s --coalesce 2s --host testhost"
            )
        )

        def am_loop_alerts() -> list[dict[str, Any]]:
            alerts = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
            return [
                a for a in alerts if a["labels"].get("alertname") == "SupervisorProcessCrashLoop"
            ]

        bodies = receiver.bodies
        crash = wait_for(
            lambda: [b for b in bodies if b.get("kind") == "crash"], 30, what="webhook crash"
        )[0]
        assert (
            crash["group"],
            crash["name"],
            crash["exit_status"],
            crash["host"],
            crash["source"],
        ) == ("looper", "looper", 5, "testhost", "crashmail")
        firing = wait_for(am_loop_alerts, 40, what="crash loop in alertmanager")[0]
        assert firing["labels"] == {
            "alertname": "SupervisorProcessCrashLoop",
            "group": "looper",
            "name": "looper",
            "host": "testhost",
            "kind": "crash_loop",
            "severity": "critical",
            "source": "crashmail",
        }
        fixed.touch()
        wait_for(lambda: not am_loop_alerts(), 40, what="crash loop resolved in alertmanager")
        assert [b for b in bodies if b.get("kind") == "resolved"]


def alerts_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(alerts: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for a in alerts:
        if a["group"]:
            out.add(f"{a['group']}:{a['name']}")
        out.update(a.get("processes") or ())
    return out


STORM = """
[program:storm]
command=/bin/sh -c "sleep 3; echo dying >&2; exit 3"
numprocs=200
process_name=%(program_name)s_%(process_num)03d
startsecs=1
autorestart=false
stdout_logfile=NONE
stderr_logfile=NONE
"""
ALL_STORM = {f"storm:storm_{i:03d}" for i in range(200)}


class TestStorm:
    def test_200_crashes_with_buffer_sized_as_documented_are_all_reported(
        self, supervisord, tmp_path
    ):
        """buffer_size=1024 (4 x 200, rounded up): all 200 crashes named, few messages, no loss."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            STORM
            + listener_conf(
                f"--sink file:{out} --outbox %(here)s/outbox.sqlite --coalesce 3s --burst 5",
                buffer_size=1024,
            )
        )
        wait_for(lambda: named(alerts_in(out)) >= ALL_STORM, 90, what="all 200 named")
        alerts = alerts_in(out)
        assert len(alerts) <= 5 + 2
        assert [a for a in alerts if a["kind"] == "events_lost"] == []
        assert "overflowed" not in sup.log_text()

    def test_200_crashes_with_buffer_size_10_loss_is_reported_and_reconcile_finds_all(
        self, supervisord, tmp_path
    ):
        """buffer_size=10: events are lost, one notice says so, the reconcile names every crash."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            STORM
            + listener_conf(
                f"--sink file:{out} --outbox %(here)s/outbox.sqlite --coalesce 3s --burst 5",
                buffer_size=10,
            ),
            clean_log=False,
        )
        try:
            # a loaded CI host (an image build beside it) has taken more than 90 s here
            wait_for(lambda: named(alerts_in(out)) >= ALL_STORM, 180, what="all 200 named")
        except AssertionError as exc:
            missing = len(ALL_STORM - named(alerts_in(out)))
            err = sup.dir / "crashmail.err"
            said = err.read_text()[-3000:] if err.exists() else "(no crashmail log)"
            raise AssertionError(f"{exc}; {missing} not named; crashmail's log:\n{said}") from None
        wait_for(
            lambda: [
                a
                for a in alerts_in(out)
                if a["kind"] == "events_lost"
                or any(i["kind"] == "events_lost" for i in a.get("details", {}).get("items", []))
            ],
            30,
            what="events_lost notice",
        )
        assert "overflowed" in sup.log_text()
        assert "raise buffer_size" in out.read_text().lower() or "Raise buffer_size" in (
            out.read_text()
        )


# --------------------------------------------------------------------------- wake

# Runs past startsecs, writes a line (that output wakes supervisord, which hands crashmail the
# pending RUNNING event), then crashes alone: nothing but a wake can hurry the EXITED event.
CRASHER = """
[program:crasher]
command=/bin/sh -c "sleep 1.2; echo about to crash >&2; sleep 0.4; exit 3"
autostart=false
autorestart=true
startsecs=1
startretries=100
"""


def exit_times(log_text: str, name: str) -> list[float]:
    """When supervisord reaped each exit of ``name``: its own ``exited: NAME`` log lines."""
    out = []
    for line in log_text.splitlines():
        if f" exited: {name} (" in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def crash_handled_times(outbox: Path) -> list[float]:
    """When crashmail handled each crash event: the outbox commit time of each crash incident."""
    if not outbox.exists():
        return []
    with sqlite3.connect(outbox) as db:
        rows = db.execute("SELECT created, body FROM incidents ORDER BY id").fetchall()
    return [float(c) for c, body in rows if json.loads(body)["kind"] == "crash"]


class TestWake:
    def delays(self, supervisord, tmp_path: Path, wake: str, crashes: int) -> list[float]:
        """Seconds from supervisord reaping each crash to crashmail handling its event."""
        tag = wake.replace(" ", "").replace("-", "")
        outbox = tmp_path / f"outbox-{tag}.sqlite"
        sup: Supervisord = supervisord(
            CRASHER
            + listener_conf(
                f"--sink file:{tmp_path}/alerts-{tag}.jsonl --outbox {outbox} --loop 1000/1h {wake}"
            )
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        sup.client.start("crasher", wait=False)
        handled = wait_for(
            lambda: len(t := crash_handled_times(outbox)) >= crashes and t,
            60,
            what=f"{crashes} crashes handled with {wake}",
        )
        sup.client.stop("crasher", wait=True)
        reaped = exit_times(sup.log_text(), "crasher")
        self.logs[wake] = (sup.dir / "crashmail.err").read_text()
        return [h - r for r, h in zip(reaped[:crashes], handled[:crashes], strict=True)]

    def test_exit_and_interval_wakes_get_crashes_to_crashmail_sooner_than_the_1s_poll(
        self, supervisord, tmp_path
    ):
        """Same crashes, wake off / exit-triggered / every 100ms: each wake cuts the median
        wait by well over 0.3 s, and the exit wake really ran on pidfds (no fallback)."""
        self.logs: dict[str, str] = {}
        off = self.delays(supervisord, tmp_path, "--wake off", 5)
        exit_ = self.delays(supervisord, tmp_path, "--wake exit", 5)
        interval = self.delays(supervisord, tmp_path, "--wake interval --wake-interval 100ms", 5)
        # Off, the event waits for supervisord's next poll timeout (~1 s); with a wake, for the
        # poke (tens of ms). The margin leaves room for a loaded machine.
        assert statistics.median(exit_) + 0.3 < statistics.median(off), (off, exit_)
        assert statistics.median(interval) + 0.3 < statistics.median(off), (off, interval)
        assert all(d >= 0 for d in off + exit_ + interval), (off, exit_, interval)
        modes = {
            wake: [
                json.loads(line).get("mode")
                for line in text.splitlines()
                if '"crashmail.wake' in line
            ]
            for wake, text in self.logs.items()
        }
        assert {
            "--wake off": ["off"],
            "--wake exit": ["exit"],
            "--wake interval --wake-interval 100ms": ["interval"],
        } == modes


# --------------------------------------------------------------------------- exit statuses

EXITS = textwrap.dedent("""
    [program:nostart]
    command=/bin/sh -c "echo 'cannot start' >&2; exit 7"
    startsecs=5
    startretries=1
    autostart=false
    autorestart=true

    [program:mix]
    command=/bin/sh -c "if [ -e %(here)s/failed-start ]; then exit 5; fi; sleep 1.3; exit 3"
    startsecs=1
    startretries=0
    autostart=false
    autorestart=unexpected
    """)


class TestExitStatuses:
    def test_fatal_and_a_held_crash_carry_their_own_exit_status(self, supervisord, tmp_path):
        """A program that exits 7 before startsecs: its fatal alert says exit status 7 (not
        unknown). A crash (exit 3) held by --coalesce while the program goes on to a failed
        start (exit 5, FATAL): the crash, delivered after both, still says 3, from its own
        pid's lines in supervisord's log, and the summary of held items does not say 0."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            EXITS
            + listener_conf(
                f"--sink file:{out} --outbox %(here)s/outbox.sqlite --loop 1000/1h"
                " --coalesce 4s --burst 1"
            )
        )
        sup.wait_state("crashmail:crashmail", "RUNNING", 30)
        sup.client.start("nostart:nostart", wait=False)
        sup.wait_state("nostart:nostart", "FATAL", 30)
        fatal = wait_for(
            lambda: [a for a in alerts_in(out) if a["kind"] == "fatal"], 30, what="fatal alert"
        )
        assert 7 == fatal[0]["exit_status"], fatal[0]
        assert "exit status 7" in fatal[0]["text"]

        # mix: one crash from RUNNING (3) is held (burst 1: the fatal went at once), then
        # its respawn fails (5) and goes FATAL: the held crash is delivered after all that
        sup.client.start("mix:mix", wait=False)
        sup.wait_state("mix:mix", "RUNNING", 30)
        (sup.dir / "failed-start").touch()
        sup.wait_state("mix:mix", "FATAL", 30)

        def mix_crash() -> list[dict[str, Any]]:
            found = []
            for a in alerts_in(out):
                if a["kind"] == "crash" and a["name"] == "mix":
                    found.append(a)
                for item in a.get("details", {}).get("items", []):
                    if item["kind"] == "crash" and item["name"] == "mix":
                        found.append(item)
            return found

        (crash,) = wait_for(mix_crash, 30, what="mix's crash")
        assert 3 == crash["exit_status"], crash
