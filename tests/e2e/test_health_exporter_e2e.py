"""supervisor-health's findings in a real exporter, over a real supervisord's bus.

Story: "health probes a web worker, watches a queue worker's heartbeats and holds a crash-looping
worker between restarts; Prometheus and the status page see the probe pass, the heartbeat's age
and the time until the held worker starts again". The path under test is health's
``health_status`` message (sendRemoteCommEvent), supervisord's REMOTE_COMMUNICATION dispatch, the
exporter's state and its renderers.
"""

from __future__ import annotations

import textwrap

from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_exporter_e2e import exporter_conf, fetch, value
from tests.e2e.test_health_e2e import HERE, ROOT


def test_probe_heartbeat_and_backoff_reach_the_exporter(supervisord, tmp_path):
    """probe_success 1 for the answering web worker, a heartbeat age under its limit for the
    beating queue worker, backoff_seconds above 0 for the held crash looper; the status page
    says "backing off, next start in N s" for it. Then web starts answering 500: 0."""
    web_port, port = free_port(), free_port()
    flag = tmp_path / "web.flag"
    conf = tmp_path / "health.conf"
    conf.write_text(
        textwrap.dedent(f"""
        [health]
        grace = 1s

        [program:web]
        http = http://127.0.0.1:{web_port}/
        period = 500ms
        failures = 50

        [program:queue]
        heartbeat = 30s

        [program:looper]
        backoff = yes
        backoff-base = 30s
        """)
    )
    sup = supervisord(
        textwrap.dedent(f"""
        [program:web]
        command={PYTHON} {HERE} http {web_port} {flag}
        startsecs=1

        [program:queue]
        command={PYTHON} {HERE} beat {tmp_path}/queue.flag
        startsecs=1
        stdout_capture_maxbytes=1MB
        stdout_logfile=NONE

        [program:looper]
        command={PYTHON} {WORKER} crash --after 1.2 --code 3
        startsecs=1
        autorestart=true

        [eventlistener:health]
        command={PYTHON} -m listeners.health --config {conf}
        events=PROCESS_STATE,PROCESS_COMMUNICATION
        buffer_size=1024
        stderr_logfile={tmp_path}/health.log
        environment=PYTHONPATH="{ROOT}"
        """)
        + exporter_conf(port)
    )
    sup.wait_all("RUNNING", ["web:web", "queue:queue"], timeout=60)
    web, queue, looper = (
        {"group": "web", "name": "web"},
        {"group": "queue", "name": "queue"},
        {"group": "looper", "name": "looper"},
    )
    wait_for(
        lambda: (
            value(port, "supervisord_process_probe_success", **web) == 1
            and (value(port, "supervisord_process_backoff_seconds", **looper) or 0) > 0
        ),
        60,
        0.5,
        what="health's status in the exporter",
    )
    age = value(port, "supervisord_process_heartbeat_age_seconds", **queue)
    assert age is not None
    assert 0 <= age < 30
    held = value(port, "supervisord_process_backoff_seconds", **looper)
    assert held is not None
    assert 0 < held <= 30
    assert "backing off, next start in" in fetch(port, "/")
    flag.touch()
    wait_for(
        lambda: value(port, "supervisord_process_probe_success", **web) == 0,
        60,
        0.5,
        what="the failing probe in the exporter",
    )
