"""crashmail forgets a removed group, with a real supervisord adding and removing it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for

REPO = Path(__file__).parents[2]

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
    def test_a_removed_group_is_forgotten_and_comes_back_clean(self, supervisord):
        """Add a crash-looping group, remove it: crashmail logs group_forgotten and closes its
        incident with a 'removed' note; added again, its first crash is a crash alert again."""
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [include]
            files = %(here)s/conf.d/*.conf

            [eventlistener:crashmail]
            command={PYTHON} -m listeners.crashmail --sink file:%(here)s/alerts.jsonl
                --outbox %(here)s/outbox.sqlite --loop 2/2m --coalesce 1s --burst 20
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
        conf_d = sup.dir / "conf.d"
        conf_d.mkdir()
        sup.start()
        sup.wait_state("crashmail", "RUNNING", 60)
        alerts, err = sup.dir / "alerts.jsonl", sup.dir / "crashmail.err"

        def of_late(kind: str, after: float = 0.0) -> list[dict[str, Any]]:
            return [
                a
                for a in alerts_in(alerts)
                if a["kind"] == kind and a["name"] == "late" and a["time"] > after
            ]

        (conf_d / "late.conf").write_text(textwrap.dedent(LATE))
        assert ["late"] == sup.client.update()["added"]
        wait_for(lambda: of_late("crash_loop"), 90, what="late's crash loop")

        (conf_d / "late.conf").unlink()
        assert ["late"] == sup.client.update()["removed"]
        forgotten = wait_for(
            lambda: log_events(err, "crashmail.group_forgotten"), 60, what="group_forgotten"
        )
        assert "late" == forgotten[0]["group"]
        (note,) = wait_for(lambda: of_late("resolved"), 60, what="the removed note")
        assert "removed" == note["details"]["note"]
        assert "removed from supervisord while crash looping" in note["text"]
        removed_at = float(note["time"])

        (conf_d / "late.conf").write_text(textwrap.dedent(LATE))
        assert ["late"] == sup.client.update()["added"]
        # a clean start: its first crash is an alert again (an incident left open would have
        # counted it silently), and it takes two crashes to loop again
        wait_for(lambda: of_late("crash", removed_at), 90, what="a crash alert of the new late")
        wait_for(lambda: of_late("crash_loop", removed_at), 90, what="a new loop incident")
        sup.client.stop_group("late")
