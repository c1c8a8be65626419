"""crashmail forgets a removed group, with a real supervisord adding and removing it."""

from __future__ import annotations

import io
import json
import textwrap
import time
from pathlib import Path
from typing import Any

from listeners import tasks
from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for

REPO = Path(__file__).parents[2]
#: what supervisord logs for each of late's crashes
EXITED = "exited: late (exit status 3"

LATE = f"""
[program:late]
command={PYTHON} {WORKER} crash --after 1.2 --code 3
startsecs=1
startretries=100
autorestart=true
"""


def alerts_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if event in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class TestRemovedGroup:
    def test_tasks_disable_on_a_looping_worker_keeps_its_incident_until_really_fixed(
        self, supervisord
    ):
        """A worker crash loops; `supervisor-tasks disable` stops it and removes its group:
        one "stopped on purpose" note, never a resolved alert, while crashmail forgets the
        group's other state. Enabled again still broken, its crashes continue the same
        incident silently; enabled fixed, one resolved alert closes it after the stable
        window, counting the exits from before and after the disable."""
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [include]
            files = %(here)s/tasks/*.conf

            [eventlistener:crashmail]
            command={PYTHON} -m listeners.crashmail --sink file:%(here)s/alerts.jsonl
                --outbox %(here)s/outbox.sqlite --loop 2/8s --coalesce 1s --burst 20
            events=PROCESS_STATE,PROCESS_GROUP,REMOTE_COMMUNICATION
            buffer_size=1024
            startsecs=1
            autorestart=true
            stderr_logfile=%(here)s/crashmail.err
            stderr_logfile_maxbytes=0
            environment=PYTHONPATH="{REPO}"
            """),
            start=False,
        )
        for sub in ("tasks", "tasks_disabled"):
            (sup.dir / sub).mkdir()
        (sup.dir / "tasks" / "late.conf").write_text(textwrap.dedent(LATE))
        sup.start()
        sup.wait_state("crashmail", "RUNNING", 60)
        alerts, err = sup.dir / "alerts.jsonl", sup.dir / "crashmail.err"

        def of_late(*kinds: str) -> list[dict[str, Any]]:
            return [a for a in alerts_in(alerts) if a["kind"] in kinds and a["name"] == "late"]

        def tasks_cli(*args: str) -> None:
            out, errs = io.StringIO(), io.StringIO()
            code = tasks.main(["-c", str(sup.conf), *args], out=out, err=errs)
            assert 0 == code, errs.getvalue()

        (loop,) = wait_for(lambda: of_late("crash_loop"), 90, what="late's crash loop")
        incident = loop["details"]["incident"]
        tasks_cli("disable", "late")
        forgotten = wait_for(
            lambda: log_events(err, "crashmail.group_forgotten"), 60, what="group_forgotten"
        )
        assert "late" == forgotten[0]["group"]
        (note,) = wait_for(
            lambda: [a for a in of_late("crash_loop") if a["details"].get("note")],
            60,
            what="the stopped note",
        )
        assert "stopped on purpose while crash looping" in note["text"]
        assert incident == note["details"]["incident"]
        noted = len(alerts_in(alerts))

        # enabled again, still broken: two more crashes, no crash and no new loop alert
        crashed = sup.log_text().count(EXITED)
        tasks_cli("enable", "late")
        wait_for(
            lambda: sup.log_text().count(EXITED) >= crashed + 2,
            90,
            what="late crashing twice again after enable",
        )
        tasks_cli("disable", "late")
        time.sleep(2)  # anything recorded for those crashes is delivered by now (coalesce 1s)
        after = alerts_in(alerts)[noted:]
        assert [] == [a for a in after if a.get("name") == "late"], after

        # fixed and enabled: stable for the window (8 s), then exactly one resolved alert
        (sup.dir / "tasks_disabled" / "late.conf").write_text(
            textwrap.dedent(f"""
            [program:late]
            command={PYTHON} {WORKER} steady
            startsecs=1
            """)
        )
        tasks_cli("enable", "late")
        (resolved,) = wait_for(lambda: of_late("resolved"), 90, what="the resolved alert")
        assert incident == resolved["details"]["incident"]
        exits = sup.log_text().count(EXITED)
        assert f"saw {exits} exits" in resolved["text"]
        assert [] == [a for a in of_late("crash") if a["time"] > loop["time"]]
