"""crashmail's crash-loop incidents against a real supervisord: one problem, one alert, until
it is really over (stops, supervisord restarts and failed starts included)."""

from __future__ import annotations

import itertools
import json
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import SmtpServer, listener_conf, smtp_sink


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
        """What the loop alert says to run after a fix: supervisorctl restart. Its stop is no
        news: after the note's 15 s hold and more, no "stopped on purpose" alert arrived."""
        flag = tmp_path / "fixed"
        out = tmp_path / "alerts.jsonl"
        sup: Supervisord = supervisord(
            looper(flag) + listener_conf(f"--sink file:{out} --loop 3/8s --coalesce 5s")
        )
        wait_for(lambda: of(alerts_in(out), "crash_loop"), 60, what="the loop alert")
        flag.touch()  # the fix, then the restart the alert asks for
        sup.client.call("supervisor.stopProcess", "looper:looper", True)
        sup.client.call("supervisor.startProcess", "looper:looper", True)
        wait_for(lambda: of(alerts_in(out), "resolved"), 60, what="the resolved alert")
        time.sleep(10)  # resolved came 9 s after the stop: 19 s, past the note's 15 s hold
        time.sleep(10)  # resolved came ~9 s after the restart: 19 s, past the note's 15 s hold


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


class TestOneOutboxPerSupervisord:
    def test_two_supervisords_with_default_outboxes_never_deliver_each_others(
        self, supervisord, tmp_path
    ):
        """A's alerts cannot be delivered (pending in its default outbox); B, default outbox
        too, delivers its own crash and never A's."""
        a_out = tmp_path / "blocker" / "alerts.jsonl"
        (tmp_path / "blocker").write_text("a file where a directory should be\n")
        b_out = tmp_path / "b.jsonl"
        crasher = textwrap.dedent("""
            [program:{name}]
            command={python} {worker} crash --after 1.5 --code 3
            startsecs=1
            autorestart=false
            """)
        a = supervisord(
            crasher.format(name="from_a", python=PYTHON, worker=WORKER)
            + listener_conf(f"--sink file:{a_out}")
        )
        a.wait_state("from_a:from_a", "EXITED", 30)
        wait_for(
            lambda: "outbox.delivery_failed" in (a.dir / "crashmail.err").read_text(),
            30,
            what="A's failed delivery",
        )
        supervisord(
            crasher.format(name="from_b", python=PYTHON, worker=WORKER)
            + listener_conf(f"--sink file:{b_out}")
        )
        wait_for(lambda: alerts_in(b_out), 30, what="B's own crash alert")
        time.sleep(5)
        names = {x["name"] for x in alerts_in(b_out)}
        assert names == {"from_b"}
        state = Path.home() / ".local" / "state" / "supervisor-listeners"
        assert len(list(state.glob("crashmail-outbox-*.sqlite"))) == 2
