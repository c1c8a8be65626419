"""The fleet e2e helpers drive a real Prometheus and a real Alertmanager on loopback.

Stories: "Prometheus scrapes a host's exporter with the shipped rules and sees its FATAL worker";
"a crashmail push reaches the team's webhook once, even when Prometheus raises the same alert".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet_support import (
    Server,
    StaticMetricsServer,
    WebhookReceiver,
    alertmanager_alerts,
    alertmanager_post_alerts,
    prometheus_query,
    prometheus_rules,
    running_alertmanager,
    running_prometheus,
    wait_until,
    write_alertmanager_config,
    write_prometheus_config,
)

pytestmark = pytest.mark.e2e

# What the exporter would serve for a host with one healthy worker near its limit and one FATAL.
EXPORTER_TEXT = """\
# TYPE supervisord_up gauge
supervisord_up 1
# TYPE supervisord_process_state gauge
supervisord_process_state{group="web",name="web_0",state="RUNNING"} 1
supervisord_process_state{group="web",name="web_0",state="FATAL"} 0
supervisord_process_state{group="etl",name="etl",state="RUNNING"} 0
supervisord_process_state{group="etl",name="etl",state="FATAL"} 1
# TYPE supervisord_process_memory_bytes gauge
supervisord_process_memory_bytes{group="web",name="web_0"} 18350080
# TYPE supervisord_process_memory_judged_bytes gauge
supervisord_process_memory_judged_bytes{group="web",name="web_0"} 15938355
# TYPE supervisord_process_memory_limit_bytes gauge
supervisord_process_memory_limit_bytes{group="web",name="web_0"} 16777216
"""

HOST = "e2e-host"
WAIT = 15.0  # seconds; scrapes and evaluations run every second


def crash_loop_alert(source: str) -> dict[str, Any]:
    """A SupervisorProcessCrashLoop alert as crashmail (or the Prometheus rule) labels it."""
    return {
        "labels": {
            "alertname": "SupervisorProcessCrashLoop",
            "host": HOST,
            "group": "mail",
            "name": "mail_0",
            "kind": "crash_loop",
            "severity": "warning",
            "source": source,
        },
        "annotations": {"summary": f"mail:mail_0 on {HOST} is crash-looping ({source})"},
    }


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Server]:
    with StaticMetricsServer(EXPORTER_TEXT) as exporter:
        config = write_prometheus_config(tmp_path, {HOST: exporter.address})
        with running_prometheus(config, tmp_path) as server:
            yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[Server]:
    config = write_alertmanager_config(tmp_path, receiver.url)
    with running_alertmanager(config, tmp_path) as server:
        yield server


def values(server: Server, expr: str) -> dict[str, float]:
    """Instant query result as {"host/group/name/state" (empty labels left out): value}."""
    return {
        "/".join(v for k in ("host", "group", "name", "state") if (v := r["metric"].get(k))): float(
            r["value"][1]
        )
        for r in prometheus_query(server.url, expr)
    }


class TestPrometheusHelpers:
    """start_prometheus, prometheus_query and the example-derived config."""

    def test_scrapes_the_exporter_with_host_label_and_evaluates_the_rules(
        self, prometheus: Server
    ) -> None:
        """The scraped series carry `host`, rules record, and the FATAL alert goes pending."""
        up = wait_until(
            lambda: values(prometheus, 'supervisord_up{job="supervisord"}'),
            WAIT,
            what="first scrape",
        )
        assert {HOST: 1.0} == up

        fatal = wait_until(
            lambda: values(prometheus, 'host_state:supervisord_process_state:sum{state="FATAL"}'),
            WAIT,
            what="recording rule",
        )
        assert {f"{HOST}/FATAL": 1.0} == fatal

        pending = wait_until(
            lambda: values(prometheus, 'ALERTS{alertstate="pending"}'), WAIT, what="pending alerts"
        )
        assert {f"{HOST}/etl/etl", f"{HOST}/web/web_0"} == set(pending)

        alerts = {r["name"] for r in prometheus_rules(prometheus.url) if r["type"] == "alerting"}
        assert {"SupervisordDown", "SupervisorProcessFatal"} <= alerts


class TestAlertmanagerHelpers:
    """start_alertmanager, alertmanager_post_alerts, WebhookReceiver and the shipped routing."""

    def test_posted_alert_reaches_the_webhook(
        self, alertmanager: Server, receiver: WebhookReceiver
    ) -> None:
        """An alert posted to /api/v2/alerts is forwarded to the webhook receiver."""
        alertmanager_post_alerts(alertmanager.url, [crash_loop_alert("crashmail")])

        receiver.wait_for(bool, WAIT)
        assert [("firing", crash_loop_alert("crashmail")["labels"])] == [
            (a["status"], a["labels"]) for a in receiver.alerts()
        ]

    def test_crashmail_push_mutes_the_prometheus_copy(
        self, alertmanager: Server, receiver: WebhookReceiver
    ) -> None:
        """Same crash loop from both paths: one notification, the Prometheus copy is inhibited."""
        alertmanager_post_alerts(
            alertmanager.url, [crash_loop_alert("crashmail"), crash_loop_alert("prometheus")]
        )

        expected = {"crashmail": "active", "prometheus": "suppressed"}

        def states() -> dict[str, str]:
            alerts = alertmanager_alerts(alertmanager.url)
            return {a["labels"]["source"]: a["status"]["state"] for a in alerts}

        wait_until(lambda: expected == states(), WAIT, what="inhibition of the Prometheus copy")
        receiver.wait_for(bool, WAIT)
        assert expected == states()
        assert [["crashmail"]] == [
            [a["labels"]["source"] for a in body["alerts"]] for body in receiver.bodies
        ]
