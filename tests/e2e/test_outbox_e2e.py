"""crashmail on a bad day, with real parts: its outbox on a full filesystem, a receiver that
trickles its reply, receivers that ask for quiet or refuse for good, a worker whose stderr is
coloured. A real supervisord, real workers, real HTTP servers on loopback, a real tmpfs."""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import sqlite3
import textwrap
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from listeners.core import bus
from listeners.notify.alert import Alert
from listeners.notify.alertmanager import AlertmanagerSink
from listeners.notify.courier import Courier
from listeners.notify.outbox import Outbox
from listeners.notify.webhook import WebhookSink
from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, small_tmpfs, wait_for
from tests.e2e.test_exporter_e2e import exporter_conf, fetch, value
from tests.fakes import FakeClock, outbox_counts

REPO = Path(__file__).parents[2]


def crashmail_conf(args: str) -> str:
    return textwrap.dedent(f"""
    [eventlistener:crashmail]
    command={PYTHON} -m listeners.crashmail {args}
    events=PROCESS_STATE,REMOTE_COMMUNICATION
    buffer_size=1024
    startsecs=1
    autorestart=true
    stderr_logfile=%(here)s/crashmail.err
    environment=PYTHONPATH="{REPO}"
    """)


def alerts_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def crashmail_log(sup: Supervisord) -> str:
    path = sup.dir / "crashmail.err"
    return path.read_text(errors="replace") if path.exists() else ""


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    with small_tmpfs(tmp_path / "disk", "size=1m,mode=0700") as where:
        yield where


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no block left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def each_crash_delivered_once(out: Path, n: int) -> list[tuple[str, int]]:
    """Wait for ``n`` crash alerts in the file sink, then a little more (a duplicate would
    arrive within the courier's next rounds); (name, exit status) of every crash, sorted."""
    wait_for(
        lambda: len([a for a in alerts_in(out) if a["kind"] == "crash"]) >= n,
        40,
        what=f"{n} crashes delivered",
    )
    time.sleep(1.5)
    return sorted((a["name"], a["exit_status"]) for a in alerts_in(out) if a["kind"] == "crash")


def workers(n: int) -> str:
    return "".join(
        textwrap.dedent(f"""
        [program:w{i}]
        command={PYTHON} {WORKER} crash --after 1.2 --code {10 + i}
        startsecs=1
        autostart=false
        autorestart=false
        """)
        for i in range(n)
    )


class TestDamagedOutbox:
    """Rows a real crashmail finds in its outbox when it starts: one damaged incident, one
    delivery whose message row is gone (a hand edit, a disk error, an older bug)."""

    def test_a_damaged_row_and_an_orphan_delivery_hold_up_nothing(self, supervisord, tmp_path):
        """The damaged incident is quarantined and logged, the orphan delivery is marked and
        not retried, and the crash made after the restart is delivered as usual."""
        out = tmp_path / "alerts.jsonl"
        outbox = tmp_path / "outbox.sqlite"
        sup: Supervisord = supervisord(
            workers(1) + crashmail_conf(f"--sink file:{out} --outbox {outbox}")
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        wait_for(outbox.exists, 20, what="the outbox file")
        sup.client.call("supervisor.stopProcess", "crashmail:crashmail", True)
        with sqlite3.connect(outbox) as db:
            db.execute(
                "INSERT INTO incidents (key, batch, body, created, due) VALUES (?, ?, ?, 0, 0)",
                ("damaged-1", "crash:w9", "{not json"),
            )
            db.execute(
                "INSERT INTO deliveries (message_id, sink, next_attempt) VALUES (?, ?, 0)",
                (99999, f"file:{out}"),
            )
        sup.client.call("supervisor.startProcess", "crashmail:crashmail", True)
        sup.client.start("w0:w0")
        assert each_crash_delivered_once(out, 1) == [("w0", 10)]
        wait_for(
            lambda: "outbox.orphaned_deliveries" in crashmail_log(sup),
            20,
            what="the orphan delivery marked",
        )
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            quarantined = db.execute("SELECT source, key FROM quarantine").fetchall()
            orphan = db.execute("SELECT state FROM deliveries WHERE message_id = 99999").fetchone()
        log = crashmail_log(sup)
        assert (quarantined, orphan[0]) == ([("incidents", "damaged-1")], "orphaned")
        assert ("outbox.row_quarantined" in log, "Traceback" in log) == (True, False)


class TestLockedOutbox:
    def test_crashes_made_while_another_process_holds_the_outbox_lock_are_reported_after(
        self, supervisord, tmp_path
    ):
        """An sqlite3 shell holds the outbox's write lock (BEGIN EXCLUSIVE) while three
        workers crash: crashmail keeps them in memory instead of waiting on the lock, says so,
        and delivers each once the lock is gone."""
        out = tmp_path / "alerts.jsonl"
        outbox = tmp_path / "outbox.sqlite"
        sup: Supervisord = supervisord(
            workers(3)
            + crashmail_conf(f"--sink file:{out} --outbox {outbox} --coalesce 1s --burst 10")
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        wait_for(outbox.exists, 20, what="the outbox file")
        shell = sqlite3.connect(outbox, isolation_level=None, timeout=30)
        try:
            shell.execute("BEGIN EXCLUSIVE")
            for i in range(3):
                sup.client.start(f"w{i}:w{i}")
            sup.wait_all("EXITED", [f"w{i}:w{i}" for i in range(3)], timeout=40)
            wait_for(
                lambda: crashmail_log(sup).count("outbox.commit_failed") >= 3,
                30,
                what="crashmail keeping the three crashes in memory",
            )
            assert [] == alerts_in(out)
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        assert each_crash_delivered_once(out, 3) == [(f"w{i}", 10 + i) for i in range(3)]
        assert "locked" in crashmail_log(sup)


class TestFullDisk:
    def test_a_crashmail_started_on_a_full_disk_waits_and_reports_the_crash_made_meanwhile(
        self, tiny_disk, supervisord, tmp_path
    ):
        """No room for a new outbox at start: crashmail waits (RUNNING, not READY, one log
        line) instead of exiting into FATAL; supervisord keeps the crash event meanwhile, and
        once there is room the crash is reported."""
        out = tmp_path / "alerts.jsonl"
        filler = fill(tiny_disk)
        sup: Supervisord = supervisord(
            workers(1) + crashmail_conf(f"--sink file:{out} --outbox {tiny_disk}/outbox.sqlite")
        )
        wait_for(
            lambda: "outbox.unavailable_at_start" in crashmail_log(sup),
            30,
            what="crashmail saying it waits for its outbox",
        )
        sup.client.start("w0:w0")
        sup.wait_state("w0:w0", "EXITED", timeout=20)
        time.sleep(6)  # past one more try at the outbox, still full
        assert "RUNNING" == sup.info("crashmail:crashmail")["statename"]
        assert [] == alerts_in(out)
        filler.unlink()
        crash = wait_for(
            lambda: [a for a in alerts_in(out) if a["kind"] == "crash"],
            40,
            what="the crash made while the outbox could not be opened",
        )
        log = crashmail_log(sup)
        assert (crash[0]["name"], crash[0]["exit_status"]) == ("w0", 10)
        assert (log.count("outbox.unavailable_at_start"), "Traceback" in log) == (1, False)

    def test_every_crash_made_while_the_outbox_disk_was_full_is_reported_once_there_is_room(
        self, tiny_disk, supervisord, tmp_path
    ):
        """Outbox on a full 1 MiB tmpfs: 6 crashes kept in memory, all delivered after room;
        the exporter beside it shows the outage (failing 1, six in memory, a page warning)
        and its end."""
        out = tmp_path / "alerts.jsonl"
        bus_log = tmp_path / "bus.log"
        port = free_port()
        sup: Supervisord = supervisord(
            exporter_conf(port)
            + workers(6)
            + crashmail_conf(
                f"--sink file:{out} --outbox {tiny_disk}/outbox.sqlite --coalesce 1s --burst 10"
            )
            + textwrap.dedent(f"""
            [eventlistener:busrec]
            command={PYTHON} {WORKER} bus-record --out {bus_log}
            events=REMOTE_COMMUNICATION
            environment=PYTHONPATH="{REPO}"
            """)
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        wait_for((tiny_disk / "outbox.sqlite").exists, 20, what="the outbox file")
        filler = fill(tiny_disk)
        for i in range(6):
            sup.client.start(f"w{i}:w{i}")
        sup.wait_all("EXITED", [f"w{i}:w{i}" for i in range(6)], timeout=40)
        wait_for(
            lambda: crashmail_log(sup).count("outbox.commit_failed") >= 6,
            20,
            what="crashmail saying it cannot commit",
        )
        assert [a for a in alerts_in(out) if a["kind"] == "crash"] == []
        failing = "supervisor_listeners_outbox_failing"
        wait_for(
            lambda: value(port, "supervisor_listeners_outbox_spooled_alerts") == 6,
            20,
            0.3,
            what="the exporter counting six alerts in crashmail's memory",
        )
        assert 1 == value(port, failing)
        assert "crashmail cannot write its outbox (database or disk is full): 6 alerts" in fetch(
            port, "/"
        )
        filler.unlink()
        assert each_crash_delivered_once(out, 6) == [(f"w{i}", 10 + i) for i in range(6)]
        troubles = wait_for(
            lambda: (
                len(
                    t := [
                        ln
                        for ln in bus_log.read_text().splitlines()
                        if ln.startswith(bus.CRASHMAIL_TYPE)
                        # the same type also carries crashmail's delivery health
                        and isinstance(bus.decode(ln.split(" ", 1)[1]), bus.OutboxTrouble)
                    ]
                )
                >= 2
                and t
            ),
            20,
            what="outbox_trouble failing then recovered on the bus",
        )
        msgs = [bus.decode(t.split(" ", 1)[1]) for t in troubles]
        told = [getattr(m, "failing", None) for m in msgs]
        assert (told[0], told[-1]) == (True, False)
        wait_for(lambda: value(port, failing) == 0, 20, 0.3, what="the exporter seeing recovery")
        assert 0 == value(port, "supervisor_listeners_outbox_spooled_alerts")
        assert "crashmail cannot write its outbox" not in fetch(port, "/")

    def test_a_crash_loop_that_forms_while_the_disk_is_full_is_reported_once(
        self, tiny_disk, supervisord, tmp_path
    ):
        """The loop path too: a worker crash loops while the outbox's disk is full; crashmail
        keeps answering supervisord (no 30 s stalls, no lost alert) and, once there is room,
        delivers one crash_loop alert, after which its exits are counted, not alerted."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [program:looper]
            command={PYTHON} {WORKER} crash --after 1.2 --code 3
            startsecs=1
            startretries=100
            autostart=false
            autorestart=true
            """)
            + crashmail_conf(
                f"--sink file:{out} --outbox {tiny_disk}/outbox.sqlite --coalesce 1s"
                " --loop 3/60s --group-wait 5s"
            )
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        wait_for((tiny_disk / "outbox.sqlite").exists, 20, what="the outbox file")
        filler = fill(tiny_disk)
        sup.client.start("looper:looper")
        wait_for(
            lambda: sup.log_text().count("exited: looper (exit status 3") >= 4,
            60,
            what="four crashes while the disk is full",
        )
        assert [] == alerts_in(out)
        assert "outbox.commit_failed" in crashmail_log(sup)
        assert "handler_failed" not in crashmail_log(sup)
        filler.unlink()
        (loop,) = wait_for(
            lambda: [a for a in alerts_in(out) if a["kind"] == "crash_loop"],
            40,
            what="the crash_loop alert once there is room",
        )
        assert "looper" == loop["name"]
        crashed = sup.log_text().count("exited: looper (exit status 3")
        wait_for(
            lambda: sup.log_text().count("exited: looper (exit status 3") >= crashed + 2,
            60,
            what="two more crashes",
        )
        time.sleep(2)  # anything those crashes made would be delivered by now (coalesce 1s)
        kinds = [a["kind"] for a in alerts_in(out)]
        assert ["crash_loop"] == kinds


# --------------------------------------------------------------------------- a trickling receiver


class Trickle(socketserver.BaseRequestHandler):
    """The first ``server.trickle`` requests get their reply one byte every 0.3 s; the rest
    are answered at once. Every request body is kept."""

    server: Any

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            body += self.request.recv(65536)
        with self.server.lock:
            self.server.bodies.append(json.loads(body))
            slow = self.server.trickle > 0
            self.server.trickle -= 1
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        if not slow:
            self.request.sendall(reply)
            return
        if self.server.endless:
            # A header line that never ends, one byte every 0.3 s, until the client hangs up.
            reply = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10**6
        with contextlib.suppress(OSError):
            for byte in reply[:20] if not self.server.endless else reply:
                self.request.sendall(bytes([byte]))
                time.sleep(0.3)
            self.request.sendall(reply[20:])


@pytest.fixture
def trickler() -> Iterator[Any]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    server.bodies = []  # type: ignore[attr-defined]
    server.trickle = 1  # type: ignore[attr-defined]
    server.endless = False  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class TestTricklingReceiver:
    def test_a_reply_trickled_byte_by_byte_is_cut_off_counted_logged_and_retried(
        self, supervisord, trickler
    ):
        """timeout=1s never fires on a byte every 0.3 s; the 2 s deadline does, then a retry."""
        port = trickler.server_address[1]
        sup: Supervisord = supervisord(
            workers(1)
            + crashmail_conf(
                f"--sink 'webhook+http://127.0.0.1:{port}/hook#timeout=1s&deadline=2s'"
                " --outbox %(here)s/outbox.sqlite --retry-max 1s"
            )
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        sup.client.start("w0:w0")
        wait_for(lambda: len(trickler.bodies) >= 2, 60, what="a retry after the deadline")
        wait_for(lambda: "outbox.delivered" in crashmail_log(sup), 20, what="delivery logged")
        failed = [ln for ln in crashmail_log(sup).splitlines() if "outbox.delivery_failed" in ln]
        assert ("deadline" in failed[0], "attempts" in failed[0]) == (True, True)
        keys = {b["key"] for b in trickler.bodies}
        assert (len(keys), {b["kind"] for b in trickler.bodies}) == (1, {"crash"})

    def test_a_receiver_that_trickles_for_good_is_cut_off_and_the_retry_delivers(
        self, supervisord, trickler
    ):
        """The first connection never ends its reply; the cut at the 2 s deadline frees the
        sink, so the retry on a new connection delivers (it used to wait for good)."""
        trickler.endless = True
        port = trickler.server_address[1]
        sup: Supervisord = supervisord(
            workers(1)
            + crashmail_conf(
                f"--sink 'webhook+http://127.0.0.1:{port}/hook#timeout=1s&deadline=2s'"
                " --outbox %(here)s/outbox.sqlite --retry-max 1s"
            )
        )
        sup.wait_state("crashmail:crashmail", "RUNNING")
        sup.client.start("w0:w0")
        wait_for(lambda: "outbox.delivered" in crashmail_log(sup), 60, what="delivery logged")
        log = crashmail_log(sup)
        failed = [ln for ln in log.splitlines() if "outbox.delivery_failed" in ln]
        assert (len(failed), "deadline" in failed[0], "still hanging" in log) == (1, True, False)
        assert (len(trickler.bodies), {b["key"] for b in trickler.bodies}) == (
            2,
            {trickler.bodies[0]["key"]},
        )


# --------------------------------------------------------------------------- Retry-After, 4xx


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from ``server.script`` (status, headers) in turn, then 200."""

    server: Any

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        script = self.server.script
        status, headers = script.pop(0) if script else (200, {})
        self.server.seen.append(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script = []  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def one_crash(tmp_path: Path, clock: FakeClock) -> Outbox:
    box = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
    box.record(Alert(kind="crash", host="h", group="g", name="n", key="k1"), due=0)
    return box


class TestReceiverAnswers:
    def test_a_429_with_retry_after_seconds_waits_that_long(self, scripted, tmp_path):
        """Retry-After: 30 on a 429 puts the next attempt 30 s out (retry-max is 1 s)."""
        scripted.script.append((429, {"Retry-After": "30"}))
        url = f"http://127.0.0.1:{scripted.server_address[1]}/hook"
        clock = FakeClock(time.time())
        box = one_crash(tmp_path, clock)
        sink = WebhookSink(url, name="hook")
        courier = Courier(box, [sink], fold=lambda a: a[0], clock=clock, retry_max=1.0)
        courier.flush_once()
        assert courier.deliver_once(sink) is False
        assert box.next_attempt("hook") == pytest.approx(clock.now + 30, abs=0.5)
        clock.now += 30
        assert (courier.deliver_once(sink), scripted.seen) == (True, [429, 200])

    def test_a_503_with_an_http_date_retry_after_is_honoured_by_alertmanager(
        self, scripted, tmp_path
    ):
        """Alertmanager sink: 503 with Retry-After as an HTTP-date 120 s ahead waits 120 s."""
        clock = FakeClock(time.time())
        scripted.script.append((503, {"Retry-After": formatdate(clock.now + 120, usegmt=True)}))
        box = one_crash(tmp_path, clock)
        sink = AlertmanagerSink(f"http://127.0.0.1:{scripted.server_address[1]}", name="am")
        courier = Courier(box, [sink], fold=lambda a: a[0], clock=clock, retry_max=1.0)
        courier.flush_once()
        courier.deliver_once(sink)
        assert box.next_attempt("am") == pytest.approx(clock.now + 120, abs=1.5)

    def test_a_404_is_given_up_at_once_and_not_retried(self, scripted, tmp_path):
        """One request, the delivery failed with a reason naming 404, nothing due later."""
        scripted.script.append((404, {}))
        clock = FakeClock(time.time())
        box = one_crash(tmp_path, clock)
        sink = WebhookSink(f"http://127.0.0.1:{scripted.server_address[1]}/x", name="hook")
        courier = Courier(box, [sink], fold=lambda a: a[0], clock=clock)
        courier.flush_once()
        courier.deliver_once(sink)
        clock.now += 3600
        courier.deliver_once(sink)
        assert (
            scripted.seen,
            box.next_attempt("hook"),
            outbox_counts(box.path).get("deliveries_failed"),
        ) == (
            [404],
            None,
            1,
        )


# --------------------------------------------------------------------------- coloured stderr


COLOURED = textwrap.dedent(r"""
[program:php]
command=/bin/sh -c "printf '\033[31mPHP Fatal error:  boom\033[0m\n' >&2; sleep 1.5; exit 255"
startsecs=1
autorestart=false
stderr_logfile=%(here)s/php.err
""")


class TestColouredStderr:
    def test_a_worker_printing_colours_still_gets_exit_status_and_tail_in_its_alert(
        self, supervisord, tmp_path
    ):
        """supervisord's XML reply breaks on ESC; the alert still has 255 and the text."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            COLOURED + crashmail_conf(f"--sink file:{out} --outbox %(here)s/outbox.sqlite")
        )
        crash = wait_for(
            lambda: [a for a in alerts_in(out) if a["kind"] == "crash"], 40, what="crash alert"
        )[0]
        assert (crash["exit_status"], "\x1b" in crash["stderr_tail"]) == (255, False)
        assert "PHP Fatal error:  boom" in crash["stderr_tail"]
        assert "crashmail.tail_unparsable" in crashmail_log(sup)
        assert os.path.exists(sup.dir / "php.err")
