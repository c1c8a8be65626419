"""health's backoff in crashmail's alerts, with a real supervisord, health and crashmail."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tests.e2e.support import PYTHON, WORKER, wait_for

REPO = Path(__file__).parents[2]


def listener(name: str, args: str, events: str) -> str:
    return textwrap.dedent(f"""
    [eventlistener:{name}]
    command={PYTHON} -m listeners.{name} {args}
    events={events}
    buffer_size=1024
    startsecs=1
    autorestart=true
    stderr_logfile=%(here)s/{name}.err
    stderr_logfile_maxbytes=0
    environment=PYTHONPATH="{REPO}"
    """)


def alerts_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TestNextStartInAlerts:
    def test_the_crash_loop_alert_of_a_held_worker_says_when_it_starts_next(self, supervisord):
        """health holds a crash-looping worker; crashmail's alert for it says 'next start in'."""
        sup = supervisord(
            textwrap.dedent(f"""
            [program:looper]
            command={PYTHON} {WORKER} crash --after 1.2 --code 3
            startsecs=1
            startretries=100
            autorestart=true
            """)
            + listener(
                "health",
                "-p looper --backoff --backoff-base 2s --backoff-cap 8s --state-dir %(here)s/st",
                "PROCESS_STATE",
            )
            + listener(
                "crashmail",
                "--sink file:%(here)s/alerts.jsonl --outbox %(here)s/outbox.sqlite"
                " --loop 3/2m --coalesce 1s --burst 20",
                "PROCESS_STATE,REMOTE_COMMUNICATION",
            )
        )
        path = sup.dir / "alerts.jsonl"

        def said() -> list[dict[str, Any]]:
            return [
                a
                for a in alerts_in(path)
                if a["name"] == "looper"
                and a["kind"] in ("crash", "crash_loop")
                and "next start in" in a["text"]
            ]

        held = wait_for(said, 120, what="a looper alert saying when it starts next")
        for alert in held:
            assert {"next_start", "backoff_seconds", "backoff_failures"} <= set(alert["details"])
            assert alert["details"]["backoff_seconds"] in (2.0, 4.0, 8.0)
        wait_for(
            lambda: [a for a in said() if a["kind"] == "crash_loop"],
            120,
            what="the crash_loop alert saying when it starts next",
        )
        # the hold is said in alerts, never an alert of its own
        kinds = {a["kind"] for a in alerts_in(path)}
        assert kinds <= {"crash", "crash_loop", "summary"}, kinds
