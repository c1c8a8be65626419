"""crashmail's crash-loop incidents against a real supervisord: one problem, one alert, until
it is really over (stops, supervisord restarts and failed starts included)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sqlite3
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from listeners.notify.incident import STOP_NOTE_HOLD
from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import SmtpServer, listener_conf, smtp_sink
from tests.fakes import outbox_counts


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def alerts_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def of(alerts: list[dict[str, Any]], kind: str, **details: Any) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if a["kind"] == kind and all(a["details"].get(k) == v for k, v in details.items())
    ]


def never(predicate: Callable[[], Any], seconds: float, what: str) -> None:
    """Poll ``predicate`` for ``seconds``; fail as soon as it returns something truthy."""
    deadline = time.monotonic() + seconds
    while True:
        found = predicate()
        assert not found, f"{what}: {found}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def looper(flag: Path, *, after: float = 1.2) -> str:
    return textwrap.dedent(f"""
    [program:looper]
    command={PYTHON} {WORKER} crash-until --flag {flag} --after {after} --code 3
        --stderr "queue connection refused"
    startsecs=1
    startretries=1000
    autorestart=true
    """)


class TestAnAfternoonCompressed:
    def test_a_loop_of_minutes_gives_one_loop_alert_reminders_and_one_resolved(
        self, supervisord, smtp, tmp_path
    ):
        """Looping ~24s with --repeat 7s and --group-wait 10s: exactly one loop alert,
        reminders >= 7s apart and one resolved saying how long and how many; no crash alert
        (the first crash waits and is absorbed by the loop), no summary."""
        flag = tmp_path / "fixed"
        out = tmp_path / "alerts.jsonl"
        supervisord(
            looper(flag)
            + listener_conf(
                f"--sink file:{out} --sink {smtp_sink(smtp.port)} --loop 3/8s --coalesce 5s"
                " --repeat 7s --group-wait 10s"
            )
        )
        wait_for(lambda: of(alerts_in(out), "crash_loop"), 60, what="the loop alert")
        time.sleep(24)
        flag.touch()
        wait_for(lambda: of(alerts_in(out), "resolved"), 60, what="the resolved alert")
        time.sleep(2)
        got = alerts_in(out)
        kinds = [a["kind"] for a in got]
        reminders = [a for a in of(got, "crash_loop") if a["details"].get("reminder")]
        assert set(kinds) == {"crash_loop", "resolved"}
        assert kinds.count("resolved") == 1
        assert kinds == ["crash_loop"] * (1 + len(reminders)) + ["resolved"]
        assert 2 <= len(reminders) <= 4
        times = [a["details"]["reminder"] for a in reminders]
        assert times == list(range(1, len(reminders) + 1))
        stamps = [a["time"] for a in reminders]
        assert all(b - a >= 7 for a, b in itertools.pairwise(stamps))
        (resolved,) = of(got, "resolved")
        assert resolved["count"] >= 8
        assert re.search(r"lasted \d+ (seconds|minute)", resolved["message"])
        mails = smtp.inbox.texts()
        assert re.search(r"Time: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", mails)
        assert "is still crash looping" in mails
        assert "supervisorctl restart looper:looper" in mails


class TestStoppingIsNotResolving:
    def test_stop_and_supervisord_restart_keep_the_incident_open(self, supervisord, tmp_path):
        """supervisorctl stop, then a supervisord restart with the worker still broken: one
        note, no second loop alert, no resolved until it is fixed; then exactly one resolved."""
        flag = tmp_path / "fixed"
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            looper(flag) + listener_conf(f"--sink file:{out} --loop 3/8s --coalesce 5s")
        )
        wait_for(lambda: of(alerts_in(out), "crash_loop"), 60, what="the loop alert")
        sup.client.call("supervisor.stopProcess", "looper:looper", True)
        # the note waits STOP_NOTE_HOLD (15 s) for a start that would make the stop a restart
        wait_for(lambda: of(alerts_in(out), "crash_loop", note="stopped"), 40, what="the note")
        sup.client.call("supervisor.startProcess", "looper:looper", False)
        time.sleep(6)
        sup.restart()
        # Still broken after the restart: it keeps crash looping for a while.
        wait_for(lambda: sup.log_text().count("exited: looper") >= 12, 60, what="more exits after")
        before_fix = alerts_in(out)
        flag.touch()
        wait_for(lambda: of(alerts_in(out), "resolved"), 60, what="the resolved alert")
        time.sleep(2)
        got = alerts_in(out)
        loops = [a for a in of(before_fix, "crash_loop") if not a["details"].get("note")]
        assert (len(loops), len(of(before_fix, "resolved"))) == (1, 0)
        assert len(of(got, "crash_loop", note="stopped")) == 1
        (resolved,) = of(got, "resolved")
        assert resolved["details"]["incident"] == loops[0]["key"]
        assert resolved["count"] >= 6

    def test_supervisorctl_restart_of_a_looping_worker_sends_no_stopped_note(
        self, supervisord, tmp_path
    ):
        """supervisorctl restart of a worker still crash looping: its stop is no news (no
        "stopped on purpose" note, not even past the note's 15 s hold) and nothing was fixed
        (no resolved alert; the incident stays open in the outbox)."""
        flag = tmp_path / "fixed"
        out = tmp_path / "alerts.jsonl"
        box = tmp_path / "outbox.sqlite"
        sup: Supervisord = supervisord(
            looper(flag)
            + listener_conf(f"--sink file:{out} --outbox {box} --loop 3/8s --coalesce 5s")
        )
        wait_for(lambda: of(alerts_in(out), "crash_loop"), 60, what="the loop alert")
        exits = sup.log_text().count("exited: looper")
        # supervisorctl restart: stop, then start. Retried: in the instant between an exit and
        # its autorestart there is nothing to stop (NOT_RUNNING).
        wait_for(
            lambda: sup.client.call("supervisor.stopProcess", "looper:looper", True),
            10,
            what="the restart's stop",
        )
        stopped_at = time.monotonic()
        sup.client.call("supervisor.startProcess", "looper:looper", True)
        # one bounded wait: a note would be sent once its hold is over
        never(
            lambda: (
                of(alerts_in(out), "crash_loop", note="stopped") + of(alerts_in(out), "resolved")
            ),
            stopped_at + STOP_NOTE_HOLD + 5 - time.monotonic(),
            what="a stopped note or a resolved alert after the restart",
        )
        got = alerts_in(out)
        loops = [a for a in of(got, "crash_loop") if not a["details"].get("note")]
        assert 1 == len(loops), got
        assert sup.log_text().count("exited: looper") >= exits + 3  # still looping since
        with sqlite3.connect(box) as db:
            assert ["looper:looper"] == [p for (p,) in db.execute("SELECT process FROM loops")]


class TestFailedStarts:
    def test_a_start_that_fails_with_7_is_one_alert_saying_7(self, supervisord, tmp_path):
        """Exit 7 before startsecs, startretries=2: one crash_loop with exit status 7 that
        says FATAL; no separate fatal alert."""
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            textwrap.dedent("""
            [program:failer]
            command=/bin/sh -c "echo no config >&2; exit 7"
            startsecs=1
            startretries=2
            autorestart=true
            """)
            + listener_conf(f"--sink file:{out} --loop 3/60s --coalesce 5s")
        )
        sup.wait_state("failer:failer", "FATAL", 30)
        wait_for(lambda: alerts_in(out), 20, what="an alert")
        time.sleep(3)
        got = alerts_in(out)
        assert [a["kind"] for a in got] == ["crash_loop"], got
        assert got[0]["exit_status"] == 7
        assert got[0]["details"]["fatal"] is True
        assert "exit status 7" in sup.log_text()


CRASHER = """
[program:{name}]
command={python} {worker} crash --after 1.5 --code 3
startsecs=1
autorestart=false
"""


def crasher(name: str) -> str:
    return CRASHER.format(name=name, python=PYTHON, worker=WORKER)


def default_outbox(sup: Supervisord) -> Path:
    """crashmail's default outbox of ``sup``: named for its server URL alone."""
    ident = hashlib.sha256(sup.url.encode()).hexdigest()[:12]
    state = Path.home() / ".local/state/supervisor-listeners"  # the test's own HOME
    return state / f"crashmail-outbox-{ident}.sqlite"


def crashmail_err(sup: Supervisord) -> str:
    path = sup.dir / "crashmail.err"
    return path.read_text(errors="replace") if path.exists() else ""


def with_identifier(sup: Supervisord, identifier: str) -> None:
    """Give ``sup`` (not started yet) ``identifier=`` in its [supervisord] section."""
    text = sup.conf.read_text()
    sup.conf.write_text(
        text.replace("[supervisord]\n", f"[supervisord]\nidentifier={identifier}\n", 1)
    )


def refused(sup: Supervisord) -> str:
    """``sup``'s crashmail exits 2 at every start until supervisord gives up: its refusal line."""
    sup.wait_state("crashmail:crashmail", "FATAL", 60)
    assert "exited: crashmail (exit status 2; not expected)" in sup.log_text()
    assert "gave up: crashmail entered FATAL state" in sup.log_text()
    err = crashmail_err(sup)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert lines, err
    assert len(set(lines)) == 1, lines  # the same one line at every start
    return lines[0]


class TestOneOutboxPerSupervisord:
    def test_two_supervisords_with_default_outboxes_never_deliver_each_others(
        self, supervisord, tmp_path
    ):
        """A and B send to the same sink (one file, so one sink name), each with its default
        outbox. A's crash cannot be delivered yet and A stops with it pending; then B, the
        file writable again, delivers its own crash and never A's, past A's next retry."""
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a directory should be\n")
        out = blocker / "alerts.jsonl"
        a = supervisord(crasher("from_a") + listener_conf(f"--sink file:{out}"))
        a.wait_state("from_a:from_a", "EXITED", 30)
        wait_for(lambda: "outbox.delivery_failed" in crashmail_err(a), 30, what="A's failure")
        a.stop()
        a_box = default_outbox(a)
        assert 1 == outbox_counts(str(a_box)).get("deliveries_pending"), outbox_counts(str(a_box))
        with sqlite3.connect(a_box) as db:
            (retry_at,) = db.execute("SELECT MAX(next_attempt) FROM deliveries").fetchone()
        blocker.unlink()
        blocker.mkdir()
        b = supervisord(crasher("from_b") + listener_conf(f"--sink file:{out}"))
        wait_for(lambda: alerts_in(out), 30, what="B's own crash alert")
        # one bounded wait: past the time A's pending delivery was due again
        time.sleep(max(0.0, retry_at - time.time()) + 3)
        assert {"from_b"} == {x["name"] for x in alerts_in(out)}
        assert 1 == outbox_counts(str(a_box)).get("deliveries_pending")
        assert default_outbox(b) != a_box
        assert default_outbox(b).exists()
        assert "outbox.owner_unchecked" not in crashmail_err(a) + crashmail_err(b)

    def test_crashmail_pointed_at_another_supervisords_outbox_exits_with_one_line(
        self, supervisord, tmp_path
    ):
        """B's crashmail given A's outbox with --outbox: it refuses it in one line naming A
        and what to do, exits 2 (supervisord shows it exiting, then FATAL), no traceback."""
        box = tmp_path / "a.sqlite"
        a = supervisord(
            crasher("from_a") + listener_conf(f"--sink file:{tmp_path}/a.jsonl --outbox {box}")
        )
        wait_for(lambda: alerts_in(tmp_path / "a.jsonl"), 30, what="A's crash alert")
        b = supervisord(
            crasher("from_b") + listener_conf(f"--sink file:{tmp_path}/b.jsonl --outbox {box}")
        )
        line = refused(b)
        assert (
            f"the outbox {box} belongs to the crashmail of another supervisord ('supervisor' at"
            f" {a.url}), not to this one ('supervisor' at {b.url}); give this one its own"
            " --outbox PATH, or leave --outbox out for the default"
        ) in line
        assert "RUNNING" == a.state("crashmail:crashmail")  # A's own crashmail is untouched

    def test_two_containers_on_one_volume_same_url_other_identifier_refused(
        self, supervisord, tmp_path
    ):
        """Two containers sharing a state volume: the same socket path (so the same URL and
        default outbox) but identifier=web-1 and web-2. web-2's crashmail refuses web-1's
        outbox in one line naming web-1, and sends nothing."""
        a = supervisord(
            crasher("from_a") + listener_conf(f"--sink file:{tmp_path}/a.jsonl"), start=False
        )
        with_identifier(a, "web-1")
        a.start()
        wait_for(lambda: alerts_in(tmp_path / "a.jsonl"), 30, what="web-1's crash alert")
        a.stop()
        programs = crasher("from_b") + listener_conf(f"--sink file:{tmp_path}/b.jsonl")
        b = supervisord(programs, start=False)
        b.sock, b.url, b.client = a.sock, a.url, a.client  # the container's same socket path
        b.write_conf(programs)
        with_identifier(b, "web-2")
        b.start()
        try:
            assert "web-2" == b.client.identification()
            line = refused(b)
        finally:
            b.stop()  # before the fixture removes web-1's dir, which holds the socket
        assert (
            f"the outbox {default_outbox(a)} belongs to the crashmail of another supervisord"
            f" ('web-1' at {a.url}), not to this one ('web-2' at {a.url}); give this one its own"
            " --outbox PATH"
        ) in line
        assert not (tmp_path / "b.jsonl").exists()
