"""Delivery health and exit statuses reach a real exporter: crashmail's undeliverable alerts
show as metrics over supervisord's bus, and a respawned crasher's exit status is exported."""

from __future__ import annotations

import textwrap

from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_crashmail_e2e import listener_conf
from tests.e2e.test_exporter_e2e import exporter_conf, value


class TestDeliveryHealth:
    def test_a_sink_that_fails_shows_pending_and_failures_in_the_exporter(
        self, supervisord, tmp_path
    ):
        """A file sink that cannot be written: alerts_pending{sink} and failures rise;
        the respawning crasher's exit status 3 is exported although it runs again."""
        (tmp_path / "blocker").write_text("a file where a directory should be\n")
        sink = f"file:{tmp_path}/blocker/alerts.jsonl"  # a sink is named by its URL
        port = free_port()
        supervisord(
            textwrap.dedent(f"""
            [program:crasher]
            command={PYTHON} {WORKER} crash --after 1.5 --code 3
            startsecs=1
            startretries=100
            autorestart=true
            """)
            + listener_conf(f"--sink {sink} --retry-max 1s")
            + exporter_conf(port)
        )
        wait_for(
            lambda: (value(port, "supervisor_listeners_alerts_pending", sink=sink) or 0) >= 1,
            60,
            what="pending alerts exported",
        )
        wait_for(
            lambda: (
                (value(port, "supervisor_listeners_alert_delivery_failures_total", sink=sink) or 0)
                >= 2
            ),
            60,
            what="failed attempts exported",
        )
        wait_for(
            lambda: (
                value(port, "supervisord_process_exit_status", group="crasher", name="crasher") == 3
            ),
            60,
            what="the crasher's exit status",
        )
