"""crashmail's Alertmanager sink across a supervisord restart, against the real Alertmanager
binary: stopping is not resolving, so a deploy that restarts supervisord while a worker is still
crash looping leaves its one alert firing, same fingerprint, same startsAt, never resolved."""

from __future__ import annotations

import datetime
import json
import sqlite3
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet_support import (
    WebhookReceiver,
    alertmanager_alerts,
    running_alertmanager,
    write_alertmanager_config,
)
from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import listener_conf

PROCESS = ['group="looper"', 'name="looper"']
LOOP_EXITS = 3

# startsecs=0: RUNNING at once, an unexpected exit 0.5 s later, restarted at once; a loop of
# LOOP_EXITS exits forms within 2 s, and a new one would form as fast after the restart.
LOOPER = textwrap.dedent(f"""
    [program:looper]
    command={PYTHON} {WORKER} crash --after 0.5 --code 3 --stderr "queue connection refused"
    startsecs=0
    startretries=1000
    autorestart=true
    """)


def when(stamp: str) -> float:
    """Alertmanager's RFC 3339 time as a Unix time."""
    return datetime.datetime.fromisoformat(stamp).timestamp()


def outbox_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def open_incident_key(outbox: Path) -> str:
    ((body,),) = outbox_rows(outbox, "SELECT body FROM loops WHERE process = 'looper:looper'")
    return str(json.loads(body)["key"])


class Watch(threading.Thread):
    """Polls Alertmanager for the looper's alerts every 0.1 s until stopped: (time, alerts)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: list[tuple[float, list[dict[str, Any]]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.seen.append((time.time(), alertmanager_alerts(self.url, PROCESS)))

    def stop(self) -> list[tuple[float, list[dict[str, Any]]]]:
        self.done.set()
        self.join(10)
        return self.seen


class TestSupervisordRestart:
    @pytest.mark.parametrize(
        ("window", "down"),
        [
            pytest.param(10, 0.0, id="restart"),
            # supervisord stops crashmail before it hands over the worker's STOPPED: the stable
            # clock saved in the outbox must not count the downtime as running time
            pytest.param(3, 4.0, id="down-longer-than-the-loop-window"),
        ],
    )
    def test_a_restart_with_the_worker_still_broken_keeps_its_one_alert_firing(
        self, supervisord, tmp_path, window, down
    ):
        """Loop alert in Alertmanager, then supervisord stopped and started on the same conf
        (down for `down` s): at every poll one alert for the process, one fingerprint, active,
        endsAt days ahead; after it startsAt unchanged; no resolved (in Alertmanager, in its
        webhook, in the outbox) and the same incident, though the worker loops on."""
        outbox = tmp_path / "outbox.sqlite"
        am_dir = tmp_path / "alertmanager"
        am_dir.mkdir()
        with WebhookReceiver() as hook:
            config = write_alertmanager_config(am_dir, hook.url)
            with running_alertmanager(config, am_dir) as am:
                sup: Supervisord = supervisord(
                    LOOPER
                    + listener_conf(
                        f"--sink alertmanager+{am.url} --outbox {outbox} --host testhost"
                        f" --loop {LOOP_EXITS}/{window}s --group-wait 5s"
                    )
                )
                (firing,) = wait_for(
                    lambda: alertmanager_alerts(am.url, PROCESS), 30, what="the loop alert"
                )
                assert firing["labels"]["alertname"] == "SupervisorProcessCrashLoop"
                assert firing["status"]["state"] == "active"
                fingerprint, starts = firing["fingerprint"], firing["startsAt"]
                key = open_incident_key(outbox)
                hook.wait_for(bool, 10)  # Alertmanager has notified the firing alert

                watch = Watch(am.url)
                watch.start()
                stopping = time.time()
                sup.stop()
                time.sleep(down)  # the deploy: supervisord is down this long
                started = time.time()
                sup.start()
                exits = sup.log_text().count("exited: looper")
                wait_for(
                    lambda: sup.log_text().count("exited: looper") >= exits + LOOP_EXITS,
                    30,
                    what="the worker crash looping on after the restart",
                )
                wait_for(
                    lambda: (
                        not outbox_rows(
                            outbox, "SELECT 1 FROM deliveries WHERE state != 'delivered'"
                        )
                    ),
                    30,
                    what="every alert delivered to Alertmanager",
                )
                seen = watch.stop()
                after = alertmanager_alerts(am.url, PROCESS)
            notified = [a for body in hook.bodies for a in body["alerts"]]

        assert any(stopping <= at <= started + 0.5 for at, _ in seen), "no poll while down"
        for at, alerts in seen:
            assert [a["fingerprint"] for a in alerts] == [fingerprint], (at, alerts)
            assert alerts[0]["status"]["state"] == "active", (at, alerts)
            assert when(alerts[0]["endsAt"]) > at + 86400, (at, alerts)
        (alert,) = after
        assert (alert["fingerprint"], alert["startsAt"]) == (fingerprint, starts)
        assert alert["status"]["state"] == "active"
        looper = [a for a in notified if a["labels"]["name"] == "looper"]
        assert looper
        assert {(a["fingerprint"], a["status"]) for a in looper} == {(fingerprint, "firing")}
        # crashmail after the restart continued the incident: same key, no new loop, no resolved
        assert open_incident_key(outbox) == key
        sent = [json.loads(b) for (b,) in outbox_rows(outbox, "SELECT body FROM messages")]
        assert {(m["kind"], m["details"]["incident"]) for m in sent} == {("crash_loop", key)}
        opening = [m for m in sent if not {"note", "reminder"} & set(m["details"])]
        assert [m["key"] for m in opening] == [key]
