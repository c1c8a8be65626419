"""The fleet example (Prometheus, Alertmanager, Grafana) is valid and uses only real metric names.

Runs promtool and amtool against the shipped files; no server is started. A missing binary is a
failure naming the Debian package, never a skip: CI installs them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from listeners.metrics.render import FAMILIES
from tests.e2e.fleet_support import (
    EXAMPLE_DIR,
    dashboard_exprs,
    dashboard_template_queries,
    expand_grafana_variables,
    require_binary,
)

PROMETHEUS_DIR = EXAMPLE_DIR / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
RULES_YML = PROMETHEUS_DIR / "rules.yml"
RULES_TEST_YML = PROMETHEUS_DIR / "rules_test.yml"
ALERTMANAGER_YML = EXAMPLE_DIR / "alertmanager" / "alertmanager.yml"
DASHBOARD_JSON = EXAMPLE_DIR / "grafana" / "supervisord.json"

# Every name the exporter can emit (its renderers' one table); rules may use no other.
EXPORTED_METRICS = frozenset(FAMILIES)
# Series Prometheus makes itself for every target.
PROMETHEUS_METRICS = frozenset({"up"})

# crashmail's direct pushes use these alertnames (and kinds); the rules raise the same names.
CRASHMAIL_ALERTS = {
    "SupervisorProcessCrashLoop": "crash_loop",
    "SupervisorProcessFatal": "fatal",
    "SupervisorMemoryRestart": "memory_restart",
}
PROCESS_LABELS = ("host", "group", "name")

PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a checker with a bounded time; its combined output is in .stdout."""
    return subprocess.run(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
        check=False,
    )


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names excluded)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def template_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana template query such as label_values(supervisord_up, host)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    if match:
        return metric_names(match.group(1))
    match = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", query)
    assert match, f"unknown template query form: {query}"
    return metric_names(match.group(1))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """All rules of rules.yml that have the key `kind` ("alert" or "record")."""
    return [r for group in load_yaml(RULES_YML)["groups"] for r in group["rules"] if kind in r]


def alerts_by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules("alert")}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return loaded


class TestMetricNames:
    """The helper that finds metric names in PromQL, so the name checks below can be trusted."""

    def test_selectors_inside_functions_and_aggregations(self) -> None:
        """Names inside rate(), sum by (...) and binary operations are all found."""
        expr = 'sum by (host, state) (rate(a_total{x="y"}[5m])) / on (host) group_left b > 0.9'
        assert {"a_total", "b"} == metric_names(expr)

    def test_label_names_strings_durations_and_keywords_are_not_names(self) -> None:
        """Label matchers, quoted values, offsets and set operators are skipped."""
        expr = 'a{name="b", state!~"c|d"} unless a offset 1h or vector(0) and bool_metric'
        assert {"a", "bool_metric"} == metric_names(expr)

    def test_grafana_template_query(self) -> None:
        """label_values(metric, label) yields the metric only."""
        assert {"supervisord_up"} == template_query_metric_names(
            "label_values(supervisord_up, host)"
        )


class TestPrometheusConfig:
    """example/prometheus/prometheus.yml."""

    def test_promtool_accepts_config_rules_and_targets_files(self) -> None:
        """promtool check config passes, which also checks rules.yml and every targets/*.yml."""
        result = run(
            [require_binary("promtool"), "check", "config", PROMETHEUS_YML.name], cwd=PROMETHEUS_DIR
        )
        assert 0 == result.returncode, result.stdout

    def test_loads_rules_and_points_at_alertmanager(self) -> None:
        """rules.yml is loaded and alerts go to an Alertmanager."""
        config = load_yaml(PROMETHEUS_YML)
        assert ["rules.yml"] == config["rule_files"]
        assert [["127.0.0.1:9093"]] == [
            sc["targets"]
            for am in config["alerting"]["alertmanagers"]
            for sc in am["static_configs"]
        ]

    def test_supervisord_job_has_static_and_file_targets_with_host(self) -> None:
        """The supervisord job lists hosts inline (each with host) and in targets/*.yml."""
        (job,) = [
            j for j in load_yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "supervisord"
        ]
        assert all("host" in sc["labels"] for sc in job["static_configs"])
        assert [["targets/*.yml"]] == [sd["files"] for sd in job["file_sd_configs"]]
        assert list((PROMETHEUS_DIR / "targets").glob("*.yml")), "an example targets file ships"

    @pytest.mark.parametrize(
        ("joined", "expected_host"),
        [
            (";worker-4.example.internal:9876", "worker-4.example.internal"),
            (";10.0.0.7:9876", "10.0.0.7"),
            ("worker-3;worker-3.example.internal:9876", None),
        ],
    )
    def test_host_relabelling_fills_only_a_missing_host(
        self, joined: str, expected_host: str | None
    ) -> None:
        """The relabel rule derives host from the address only when no host label was given."""
        (job,) = [
            j for j in load_yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "supervisord"
        ]
        (rule,) = [r for r in job["relabel_configs"] if r.get("target_label") == "host"]
        # Prometheus anchors relabel regexes at both ends.
        match = re.fullmatch(rule["regex"], joined)
        assert expected_host == (
            match.expand(rule["replacement"].replace("$1", r"\1")) if match else None
        )


class TestRules:
    """example/prometheus/rules.yml and its promtool unit tests."""

    def test_promtool_check_rules(self) -> None:
        """promtool check rules passes."""
        result = run([require_binary("promtool"), "check", "rules", str(RULES_YML)])
        assert 0 == result.returncode, result.stdout

    def test_promtool_unit_tests_pass(self) -> None:
        """promtool test rules rules_test.yml passes."""
        result = run(
            [require_binary("promtool"), "test", "rules", RULES_TEST_YML.name], cwd=PROMETHEUS_DIR
        )
        assert 0 == result.returncode, result.stdout

    def test_required_alerts_exist(self) -> None:
        """Every alert the fleet docs promise is defined."""
        expected = {
            "SupervisordDown",
            "SupervisorExporterDown",
            "SupervisorProcessCrashLoop",
            "SupervisorProcessFatal",
            "SupervisorProcessMemoryNearLimit",
            "SupervisorMemoryRestart",
        }
        assert expected == expected & set(alerts_by_name())

    def test_every_alert_has_severity_summary_and_description(self) -> None:
        """Each alert carries a severity label and summary and description annotations."""
        missing = {
            name: sorted(
                {"severity"} - set(rule.get("labels", {}))
                | {"summary", "description"} - set(rule.get("annotations", {}))
            )
            for name, rule in alerts_by_name().items()
        }
        assert {} == {name: keys for name, keys in missing.items() if keys}

    def test_severity_is_critical_or_warning(self) -> None:
        """Severities come from the small set routes can rely on."""
        assert set() == {r["labels"]["severity"] for r in rules("alert")} - {
            "critical",
            "warning",
            "info",
        }

    def test_annotations_name_host_group_and_process(self) -> None:
        """Summary and description name the host; process alerts also name group and process."""
        unnamed = []
        for name, rule in alerts_by_name().items():
            wanted = PROCESS_LABELS if name.startswith("SupervisorProcess") else ("host",)
            for key in ("summary", "description"):
                text = rule["annotations"][key]
                unnamed += [
                    f"{name}.{key}: {label}" for label in wanted if f"$labels.{label}" not in text
                ]
        assert [] == unnamed

    def test_every_alert_is_unit_tested_firing_and_silent(self) -> None:
        """rules_test.yml has, for every alert, a case where it fires and one where it does not."""
        firing, silent = set(), set()
        for case in load_yaml(RULES_TEST_YML)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
        names = set(alerts_by_name())
        assert (names, names) == (firing & names, silent & names)

    def test_metric_names_are_exported_or_recorded(self) -> None:
        """Rules use only the exporter's metrics, `up`, and recording rules defined in rules.yml."""
        recorded = {rule["record"] for rule in rules("record")}
        allowed = EXPORTED_METRICS | PROMETHEUS_METRICS | recorded
        used = {
            name for rule in rules("alert") + rules("record") for name in metric_names(rule["expr"])
        }
        assert set() == used - allowed

    def test_recording_rule_names_follow_level_metric_operation(self) -> None:
        """Recorded series are named level:metric:operation, so they never clash with raw ones."""
        assert [] == [r["record"] for r in rules("record") if len(r["record"].split(":")) != 3]

    def test_recorded_series_are_used_after_their_rule_in_the_same_group(self) -> None:
        """A rule using a recorded series follows its recording rule in one group (no eval lag)."""
        misplaced = []
        recorded = {rule["record"] for rule in rules("record")}
        for group in load_yaml(RULES_YML)["groups"]:
            seen: set[str] = set()
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                misplaced += [
                    f"{name} uses {n}" for n in metric_names(rule["expr"]) & recorded - seen
                ]
                seen |= {rule["record"]} if "record" in rule else set()
        assert [] == misplaced

    def test_crashmail_alerts_share_name_and_kind_with_the_rules(self) -> None:
        """The crash-loop and fatal rules use crashmail's alertnames and kinds, per process."""
        by_name = alerts_by_name()
        actual = {name: by_name[name]["labels"]["kind"] for name in CRASHMAIL_ALERTS}
        assert CRASHMAIL_ALERTS == actual
        # Aggregated by process: no instance/job, the same identity labels crashmail pushes.
        aggregation = f"by ({', '.join(PROCESS_LABELS)})"
        assert [] == [name for name in CRASHMAIL_ALERTS if aggregation not in by_name[name]["expr"]]

    def test_every_alert_is_marked_as_coming_from_prometheus(self) -> None:
        """source="prometheus" on every rule alert, so crashmail's pushes can inhibit them."""
        assert {"prometheus"} == {r["labels"].get("source") for r in rules("alert")}


class TestAlertmanagerConfig:
    """example/alertmanager/alertmanager.yml."""

    def test_amtool_check_config(self) -> None:
        """amtool check-config passes."""
        result = run([require_binary("amtool"), "check-config", str(ALERTMANAGER_YML)])
        assert 0 == result.returncode, result.stdout

    @pytest.mark.parametrize("source", ["crashmail", "prometheus"])
    def test_both_alert_paths_reach_the_webhook(self, source: str) -> None:
        """A crash loop from crashmail and from Prometheus is routed to the same receiver."""
        result = run(
            [
                require_binary("amtool"),
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_YML}",
                "--verify.receivers=ops-webhook",
                "alertname=SupervisorProcessCrashLoop",
                f"source={source}",
                "host=w1",
                "group=g",
                "name=n",
            ]
        )
        assert 0 == result.returncode, result.stdout
        assert "ops-webhook" == result.stdout.strip().splitlines()[-1]

    def test_no_route_splits_alerts_by_source(self) -> None:
        """No route matches on `source`: two routes would mean two notifications for one crash."""

        def matchers(route: dict[str, Any]) -> list[str]:
            own = [str(m) for m in route.get("matchers", [])] + list(route.get("match", {}))
            return own + [m for child in route.get("routes", []) for m in matchers(child)]

        assert [] == [m for m in matchers(load_yaml(ALERTMANAGER_YML)["route"]) if "source" in m]

    def test_groups_by_host_group_and_alertname(self) -> None:
        """Every route groups by alertname, host and group."""
        config = load_yaml(ALERTMANAGER_YML)
        routes = [config["route"], *config["route"].get("routes", [])]
        assert [["alertname", "host", "group"]] * len(routes) == [r.get("group_by") for r in routes]

    def test_host_down_inhibits_that_hosts_process_alerts(self) -> None:
        """SupervisordDown and SupervisorExporterDown each mute process alerts of that host."""
        inhibits = load_yaml(ALERTMANAGER_YML)["inhibit_rules"]
        actual = {
            m.split('"')[1]: rule["equal"]
            for rule in inhibits
            for m in rule["source_matchers"]
            if m.startswith("alertname")
            and any("SupervisorProcess" in t for t in rule["target_matchers"])
        }
        assert {"SupervisordDown": ["host"], "SupervisorExporterDown": ["host"]} == actual

    def test_crashmail_push_inhibits_the_prometheus_copy(self) -> None:
        """While crashmail's alert fires, the rule alert of that alertname and process is muted."""
        inhibits = load_yaml(ALERTMANAGER_YML)["inhibit_rules"]
        actual = [
            rule["equal"]
            for rule in inhibits
            if rule["source_matchers"] == ['source = "crashmail"']
            and rule["target_matchers"] == ['source = "prometheus"']
        ]
        assert [["alertname", *PROCESS_LABELS]] == actual

    def test_webhook_receiver_is_on_loopback(self) -> None:
        """The example webhook URL points at 127.0.0.1 and asks for resolved notifications."""
        receivers = load_yaml(ALERTMANAGER_YML)["receivers"]
        hooks = [h for r in receivers for h in r.get("webhook_configs", [])]
        assert [("http://127.0.0.1", True)] == [
            (h["url"].rsplit(":", 1)[0], h["send_resolved"]) for h in hooks
        ]


class TestGrafanaDashboard:
    """example/grafana/supervisord.json."""

    def test_has_a_host_variable_used_by_every_query(self) -> None:
        """A `host` template variable exists and every panel query filters on it."""
        names = [v["name"] for v in dashboard()["templating"]["list"]]
        assert "host" in names
        assert [] == [
            e.panel for e in dashboard_exprs(dashboard()) if 'host=~"$host"' not in e.expr
        ]

    def test_covers_the_fleet_views(self) -> None:
        """Hosts up, processes by state, process table, memory vs limit, restarts, crash loops."""
        titles = " | ".join(e.panel for e in dashboard_exprs(dashboard())).lower()
        wanted = [
            "supervisord up",
            "processes by state",
            "processes",
            "memory against limit",
            "restarts",
            "crash-looping",
        ]
        assert [] == [w for w in wanted if w not in titles]

    def test_every_expr_parses(self, tmp_path: Path) -> None:
        """Each panel query, Grafana variables expanded, is valid PromQL (promtool check rules)."""
        exprs = dashboard_exprs(dashboard())
        assert exprs, "the dashboard has queries"
        group = {
            "name": "dashboard",
            "rules": [
                {
                    "record": f"dashboard:expr_{i}:{e.ref_id or 'A'}",
                    "expr": expand_grafana_variables(e.expr),
                }
                for i, e in enumerate(exprs)
            ],
        }
        rules_file = tmp_path / "dashboard_rules.yml"
        rules_file.write_text(yaml.safe_dump({"groups": [group]}))
        result = run([require_binary("promtool"), "check", "rules", str(rules_file)])
        assert 0 == result.returncode, result.stdout

    def test_metric_names_are_exported_ones(self) -> None:
        """Queries use only the exporter's metric names and `up`; no recording rule is needed."""
        used = {n for e in dashboard_exprs(dashboard()) for n in metric_names(e.expr)}
        used |= {
            n
            for q in dashboard_template_queries(dashboard())
            for n in template_query_metric_names(q)
        }
        assert set() == used - (EXPORTED_METRICS | PROMETHEUS_METRICS)

    def test_unknown_grafana_variable_is_an_error(self) -> None:
        """Expanding an expression with a variable the helper does not know fails loudly."""
        with pytest.raises(KeyError, match="cluster"):
            expand_grafana_variables('up{cluster="$cluster"}')

    def test_panel_ids_are_unique(self) -> None:
        """Grafana needs unique panel ids to keep panel links and edits apart."""

        def ids(panels: list[dict[str, Any]]) -> list[int]:
            return [p["id"] for p in panels] + [i for p in panels for i in ids(p.get("panels", []))]

        all_ids = ids(dashboard()["panels"])
        assert len(all_ids) == len(set(all_ids))
