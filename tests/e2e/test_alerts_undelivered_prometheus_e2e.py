"""The shipped SupervisorAlertsUndelivered rule fires in a real Prometheus when a sink is down.

Story: "crashmail's webhook is down while a worker crashes: the alerts wait in crashmail's
outbox, the exporter exports them as pending, and Prometheus, with the rules we ship, fires
SupervisorAlertsUndelivered for that host and sink". Every part is real: supervisord, the
crashing worker, crashmail (its webhook sink points at a port nobody listens on), the exporter,
and the `prometheus` binary scraping the exporter and evaluating example/prometheus/rules.yml.

The only change to the shipped rules is ``for:``: 15 minutes cannot be waited in a test, so
the test copy uses a few seconds (write_prometheus_config's ``alert_for``); the expression,
labels and annotations are the shipped ones, and the test checks Prometheus loaded that very
expression.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.fleet_support import (
    EXAMPLE_DIR,
    http_get,
    prometheus_rules,
    running_prometheus,
    wait_until,
    write_prometheus_config,
)
from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_crashmail_e2e import listener_conf
from tests.e2e.test_exporter_e2e import exporter_conf, fetch, value

ALERT = "SupervisorAlertsUndelivered"
HOST = "e2e-host"
SINK = "hook"
#: The test copy's ``for:`` (shipped: 15m); still more than one 1 s evaluation, so the alert
#: goes through pending before it fires, as it does with the shipped rules.
FOR = "3s"


def shipped_expr() -> str:
    rules = yaml.safe_load((EXAMPLE_DIR / "prometheus" / "rules.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    return str(rule["expr"])


def alerts(base_url: str) -> list[dict[str, Any]]:
    """Prometheus's active alerts (/api/v1/alerts) named ALERT."""
    status, body = http_get(f"{base_url}/api/v1/alerts")
    if status != 200:
        raise RuntimeError(f"alerts API failed ({status}): {body!r}")
    found: list[dict[str, Any]] = json.loads(body)["data"]["alerts"]
    return [a for a in found if a["labels"].get("alertname") == ALERT]


class TestAlertsUndeliveredRule:
    def test_a_down_webhook_makes_the_shipped_rule_fire(self, supervisord, tmp_path: Path):
        """Pending alerts for the down sink: the rule fires for that host and sink, with the
        shipped labels and summary."""
        closed = free_port()  # nothing listens there: every delivery is refused
        port = free_port()
        supervisord(
            textwrap.dedent(f"""
            [program:crasher]
            command={PYTHON} {WORKER} crash --after 1.5 --code 3
            startsecs=1
            startretries=100
            autorestart=true
            """)
            + listener_conf(
                f"--sink 'webhook+http://127.0.0.1:{closed}/hook#name={SINK}&timeout=2'"
                " --retry-max 1s"
            )
            + exporter_conf(port)
        )
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        wait_for(
            lambda: (value(port, "supervisor_listeners_alerts_pending", sink=SINK) or 0) >= 1,
            90,
            0.5,
            what="the exporter exporting crashmail's pending alerts",
        )

        config = write_prometheus_config(tmp_path, {HOST: f"127.0.0.1:{port}"}, alert_for=FOR)
        with running_prometheus(config, tmp_path) as prometheus:
            (loaded,) = [r for r in prometheus_rules(prometheus.url) if r["name"] == ALERT]
            assert shipped_expr().strip() == loaded["query"].strip()

            def firing() -> dict[str, Any] | None:
                return next((a for a in alerts(prometheus.url) if a["state"] == "firing"), None)

            alert = wait_until(firing, 120, 0.5, what=f"{ALERT} firing")
        labels = alert["labels"]
        assert (HOST, SINK, "critical", "prometheus") == (
            labels["host"],
            labels["sink"],
            labels["severity"],
            labels["source"],
        )
        assert (
            f"crashmail on {HOST} cannot deliver alerts to {SINK}"
            == (alert["annotations"]["summary"])
        )
        assert float(alert["value"]) >= 1
