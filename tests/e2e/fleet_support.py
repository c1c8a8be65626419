"""Helpers for fleet tests: real Prometheus and Alertmanager on loopback, and what they talk to.

Nothing here is a test. Every server binds 127.0.0.1 on a free port, every wait is bounded,
and every process is stopped by the caller (use the context managers, or `stop_process`).
The Grafana helpers are pure and also used by tests/test_fleet_config.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.support import free_port

__all__ = [
    "REPO_ROOT",
    "EXAMPLE_DIR",
    "DEBIAN_PACKAGE",
    "require_binary",
    "DashboardExpr",
    "dashboard_exprs",
    "dashboard_template_queries",
    "expand_grafana_variables",
    "write_prometheus_config",
    "write_alertmanager_config",
    "free_port",
    "wait_until",
    "http_get",
    "Server",
    "start_prometheus",
    "start_alertmanager",
    "running_prometheus",
    "running_alertmanager",
    "stop_process",
    "prometheus_query",
    "prometheus_rules",
    "alertmanager_alerts",
    "alertmanager_post_alerts",
    "WebhookReceiver",
    "StaticMetricsServer",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO_ROOT / "example"

# Which Debian package ships each binary, for the error message when one is missing.
DEBIAN_PACKAGE = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}

HTTP_TIMEOUT = 5.0


def require_binary(name: str) -> str:
    """Path of `name`, or an AssertionError naming the Debian package to install.

    Tests fail rather than skip: CI installs these packages, a skip would hide a broken CI image.
    """
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGE.get(name, name)
        raise AssertionError(
            f"{name} not found on PATH: install it with `apt-get install {package}`"
        )
    return path


# --- Grafana dashboard ---------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardExpr:
    """One PromQL query of a dashboard panel."""

    panel: str
    ref_id: str
    expr: str


def dashboard_exprs(dashboard: dict[str, Any]) -> list[DashboardExpr]:
    """Every panel target's `expr`, rows and nested panels included, in dashboard order."""
    found: list[DashboardExpr] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append(
                        DashboardExpr(
                            panel.get("title", ""), target.get("refId", ""), target["expr"]
                        )
                    )
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found


def dashboard_template_queries(dashboard: dict[str, Any]) -> list[str]:
    """The queries of `query` template variables (Grafana syntax such as label_values(...))."""
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


# What Grafana substitutes; the values are valid PromQL, picked so an expr parses and matches all.
GRAFANA_DEFAULTS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "host": ".*",
    "datasource": "prometheus",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def expand_grafana_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """`expr` with Grafana variables ($host, ${host}, $__rate_interval) replaced by `values`.

    An unknown variable raises KeyError, so a new dashboard variable cannot slip past the tests.
    """
    table = {**GRAFANA_DEFAULTS, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        return table[match.group(1) or match.group(2)]

    return _VARIABLE.sub(replace, expr)


# --- configs derived from the shipped examples ---------------------------------------------


def write_prometheus_config(
    workdir: Path,
    targets: dict[str, str],
    alertmanager: str | None = None,
    interval: str = "1s",
    alert_for: str | None = None,
) -> Path:
    """Write prometheus.yml + rules.yml into `workdir`, from the shipped example.

    The example's `supervisord` job is kept (relabelling included) with its targets replaced by
    `targets` ({host: "127.0.0.1:port"}), file_sd dropped and every interval set to `interval`.
    With `alert_for`, every alert's `for:` is replaced by it (a test cannot wait the shipped
    minutes); expressions, labels and annotations stay exactly as shipped.
    """
    config = yaml.safe_load((EXAMPLE_DIR / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "supervisord"]
    job.pop("file_sd_configs", None)
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval
    job["static_configs"] = [
        {"targets": [address], "labels": {"host": host}} for host, address in targets.items()
    ]
    config["scrape_configs"] = [job]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    if alert_for is None:
        shutil.copy(EXAMPLE_DIR / "prometheus" / "rules.yml", workdir / "rules.yml")
    else:
        rules = yaml.safe_load((EXAMPLE_DIR / "prometheus" / "rules.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = alert_for
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_alertmanager_config(workdir: Path, webhook_url: str, group_wait: str = "1s") -> Path:
    """Write the shipped alertmanager.yml into `workdir`, webhook at `webhook_url`, waits cut short.

    Routes, grouping and inhibit rules stay as shipped: tests exercise the real routing.
    Keep `group_wait` above 0: the inhibitor learns of new alerts asynchronously, and with no
    wait a group can be flushed before an inhibiting alert posted with it has been seen.
    """
    config = yaml.safe_load((EXAMPLE_DIR / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        route.update(
            {
                key: value
                for key, value in {
                    "group_wait": group_wait,
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                }.items()
                if key in route or route is config["route"]
            }
        )
        routes.extend(route.get("routes", []))
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- processes and waiting -----------------------------------------------------------------


def wait_until(
    check: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Call `check` until it returns something truthy; return it. TimeoutError after `timeout` s.

    Exceptions from `check` count as "not yet" (a server still starting refuses connections);
    the last one is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except Exception as error:
            last_error = error
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout} s") from last_error
        time.sleep(interval)


@dataclass
class Server:
    """A started binary: its process, base URL and log file."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` s; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def http_get(url: str) -> tuple[int, bytes]:
    """GET `url`: (status, body); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - loopback URL built here
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def _start(name: str, argv: list[str], url: str, workdir: Path, ready_timeout: float) -> Server:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(name, process, url, log_path)
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()}")
            try:
                if http_get(url + "/-/ready")[0] == 200:
                    return server
            except OSError:  # refused or reset while starting (URLError is an OSError)
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} not ready within {ready_timeout} s:\n{server.log()}")
            time.sleep(0.1)
    except BaseException:
        stop_process(process)
        raise


def start_prometheus(config_file: Path, workdir: Path, ready_timeout: float = 30.0) -> Server:
    """Start `prometheus` on a free loopback port, TSDB under `workdir`; wait for /-/ready."""
    binary = require_binary("prometheus")
    port = free_port()
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return _start("prometheus", argv, f"http://127.0.0.1:{port}", workdir, ready_timeout)


def start_alertmanager(config_file: Path, workdir: Path, ready_timeout: float = 30.0) -> Server:
    """Start Alertmanager on a free loopback port, clustering off; wait for /-/ready."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # empty: no gossip port, no peers
        "--log.level=warn",
    ]
    return _start("alertmanager", argv, f"http://127.0.0.1:{port}", workdir, ready_timeout)


@contextlib.contextmanager
def running_prometheus(config_file: Path, workdir: Path) -> Iterator[Server]:
    server = start_prometheus(config_file, workdir)
    try:
        yield server
    finally:
        stop_process(server.process)


@contextlib.contextmanager
def running_alertmanager(config_file: Path, workdir: Path) -> Iterator[Server]:
    server = start_alertmanager(config_file, workdir)
    try:
        yield server
    finally:
        stop_process(server.process)


# --- HTTP APIs -----------------------------------------------------------------------------


def prometheus_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query via /api/v1/query; the `result` list. RuntimeError on an API error."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed ({status}): {payload}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def prometheus_rules(base_url: str) -> list[dict[str, Any]]:
    """Every rule Prometheus has loaded (/api/v1/rules), flattened over groups."""
    status, body = http_get(f"{base_url}/api/v1/rules")
    payload = json.loads(body)
    if status != 200:
        raise RuntimeError(f"rules API failed ({status}): {payload}")
    return [rule for group in payload["data"]["groups"] for rule in group["rules"]]


def alertmanager_alerts(base_url: str, matchers: list[str] | None = None) -> list[dict[str, Any]]:
    """Alerts Alertmanager holds (/api/v2/alerts), inhibited and silenced ones included."""
    query = urllib.parse.urlencode([("filter", m) for m in matchers or []])
    status, body = http_get(f"{base_url}/api/v2/alerts?{query}")
    if status != 200:
        raise RuntimeError(f"alerts API failed ({status}): {body!r}")
    alerts: list[dict[str, Any]] = json.loads(body)
    return alerts


def alertmanager_post_alerts(base_url: str, alerts: list[dict[str, Any]]) -> None:
    """POST alerts to /api/v2/alerts, as crashmail's alertmanager sink does."""
    request = urllib.request.Request(  # noqa: S310 - loopback URL built here
        f"{base_url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
        if response.status != 200:
            raise RuntimeError(f"posting alerts failed: {response.status}")


# --- tiny local HTTP servers ---------------------------------------------------------------


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep request logs out of test output."""


@dataclass
class _Background:
    httpd: ThreadingHTTPServer
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class WebhookReceiver:
    """Records every JSON body POSTed to it (Alertmanager's webhook notifications).

    Use as a context manager; `url` is http://127.0.0.1:<port>/alerts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver._lock:
                    receiver._bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = _Background(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.url = f"http://127.0.0.1:{self._server.httpd.server_address[1]}/alerts"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._bodies)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far, in arrival order."""
        return [alert for body in self.bodies for alert in body.get("alerts", [])]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float
    ) -> list[dict[str, Any]]:
        """Wait until predicate(bodies) holds; return the bodies."""
        wait_until(lambda: predicate(self.bodies), timeout, what="webhook notifications")
        return self.bodies

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StaticMetricsServer:
    """Serves a Prometheus text exposition at /metrics that the test can replace at any time.

    Stands in for the exporter: `address` is 127.0.0.1:<port>, ready for a scrape config.
    """

    def __init__(self, text: str) -> None:
        self._lock = threading.Lock()
        self._text = text
        server = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with server._lock:
                    body = server._text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Background(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.address = f"127.0.0.1:{self._server.httpd.server_address[1]}"

    def set_text(self, text: str) -> None:
        with self._lock:
            self._text = text

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> StaticMetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
