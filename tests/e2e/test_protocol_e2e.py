"""The protocol core against a real supervisord."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.support import PYTHON, Supervisord, wait_for

RECORDER = str(Path(__file__).with_name("recorder.py"))


def records(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line]


class TestProtocolUnderLoad:
    def test_5000_events_from_50_crashing_chatty_workers_are_all_acknowledged_in_order(
        self, supervisord, tmp_path
    ):
        """Every event reaches the listener once, in serial order, with nothing lost."""
        out = tmp_path / "events.txt"
        sup: Supervisord = supervisord(
            f"""
            [program:chatty]
            command=/bin/sh -c 'echo starting; sleep 0.3; echo "naïve ✓" >&2; exit 3'
            numprocs=25
            process_name=%(program_name)s_%(process_num)02d
            startsecs=0
            autostart=false
            autorestart=true
            stdout_events_enabled=true
            stderr_events_enabled=true

            [program:talker]
            command=/bin/sh -c 'for i in $(seq 40); do echo "line $i"; done; sleep 3600'
            numprocs=25
            process_name=%(program_name)s_%(process_num)02d
            startsecs=0
            autostart=false
            stdout_events_enabled=true

            [eventlistener:recorder]
            command={PYTHON} {RECORDER} {out} --print-something
            events=EVENT
            buffer_size=16384
            environment=PYTHONPATH="{Path(__file__).parents[2]}"
            """
        )
        # The workers are /bin/sh, not Python: 50 interpreters starting over and over cost a
        # 2-core host most of the test's time without adding anything it checks.
        # Workers start once the listener takes events: on 2 cores, 50 processes
        # starting beside it could otherwise fill any buffer before its first READY.
        sup.wait_state("recorder:recorder", "RUNNING")
        wait_for(lambda: records(out), what="the listener's first event")
        for group in ("chatty", "talker"):
            sup.client.call("supervisor.startProcessGroup", group, False)
        wait_for(lambda: len(records(out)) >= 5000, timeout=240, what="5000 events")
        sup.client.call("supervisor.stopAllProcesses", True)
        rows = records(out)
        poolserials = [int(r[1]) for r in rows]
        serials = [int(r[0]) for r in rows]
        assert len(rows) >= 5000
        assert list(range(poolserials[0], poolserials[0] + len(rows))) == poolserials
        assert sorted(serials) == serials
        assert {"0"} == {r[4] for r in rows}
        names = {r[2] for r in rows}
        assert {"PROCESS_LOG_STDOUT", "PROCESS_STATE_EXITED", "PROCESS_LOG_STDERR"} <= names
        assert [] == sup.bad_log_lines()
