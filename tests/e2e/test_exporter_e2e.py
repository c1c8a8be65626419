"""The exporter against a real supervisord, real workers, Prometheus, promtool and Chromium."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from listeners.core import bus
from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, wait_for

ROOT = Path(__file__).parents[2]
EVENTS = "PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,SUPERVISOR_STATE_CHANGE"
# supervisord refuses ':' and '/' in names, so '</script>' cannot be spelled; this is the
# nastiest name it accepts that still opens a tag.
NASTY = '<script>alert("x")&amp;'
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(port: int, metric: str, /, **labels: str) -> float | None:
    return samples(fetch(port)).get((metric, frozenset(labels.items())))


def exporter_conf(port: int, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{port} {extra}
        events={EVENTS}
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"
        """)


SCENARIO = textwrap.dedent(f"""
    [program:steady]
    command={PYTHON} {WORKER} steady
    numprocs=2
    process_name=%(program_name)s_%(process_num)d
    startsecs=0

    [program:crash]
    command={PYTHON} {WORKER} crash --after 1.2 --code 3
    startsecs=1
    startretries=100

    [program:fatal]
    command={PYTHON} {WORKER} crash --after 0.1 --code 4
    startsecs=1
    startretries=1

    [program:exit3]
    command={PYTHON} {WORKER} crash --after 1.5 --code 3
    startsecs=1
    autorestart=false

    [program:leak]
    command={PYTHON} {WORKER} leak --mb-per-s 20 --stop-at-mb 24
    startsecs=0

    [program:{NASTY}]
    command={PYTHON} {WORKER} steady
    startsecs=0
    """)


@pytest.fixture
def scenario(supervisord) -> tuple[Supervisord, int]:
    port = free_port()
    sup: Supervisord = supervisord(SCENARIO + exporter_conf(port, "--reconcile-interval 1s"))
    wait_for(lambda: fetch(port, "/healthz") == "ok\n", 20, what="exporter serving")
    return sup, port


def L(name: str) -> dict[str, str]:  # noqa: N802 - reads like a label literal
    group = name.partition(":")[0] if ":" in name else name
    return {"group": group, "name": name.rpartition(":")[2]}


class TestScenario:
    def test_every_metric_has_the_value_the_scenario_implies(self, scenario):
        """Steady, crashing, fatal and leaking workers: every series says what happened."""
        sup, port = scenario
        limits = bus.MemoryLimits(host="h", limits={"leak:leak": 16 << 20, "steady:steady_0": 1})
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(limits))
        restart = bus.MemoryRestart(
            host="h",
            group="leak",
            name="leak",
            pid=1,
            measured_bytes=20 << 20,
            limit_bytes=16 << 20,
            rule="16MB",
        )
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(restart))

        missing: list[str] = []

        def ready() -> Samples | None:
            s = samples(fetch(port))
            crash = frozenset(L("crash").items())
            leak = frozenset(L("leak").items())
            checks = {
                "crash looping": s.get(("supervisord_process_crash_looping", crash)) == 1,
                "fatal": s.get(("supervisord_process_fatal_total", frozenset(L("fatal").items())))
                == 1,
                "leak over 24 MB": s.get(("supervisord_process_memory_bytes", leak), 0) > 24e6,
                "memmon restart": s.get(("supervisord_process_memory_restarts_total", leak)) == 1,
                "exit3 status": s.get(
                    ("supervisord_process_exit_status", frozenset(L("exit3").items()))
                )
                == 3,
                "crash status": s.get(("supervisord_process_exit_status", crash)) == 3,
            }
            missing[:] = [name for name, ok in checks.items() if not ok]
            return None if missing else s

        try:
            s = wait_for(ready, 60, 0.3, what="crash loop, fatal and leak visible")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still missing: {', '.join(missing)}") from None
        crash = L("crash")

        def v(metric: str, /, **labels: str) -> float | None:
            return s.get((metric, frozenset(labels.items())))

        assert v("supervisord_up") == 1
        version = sup.client.version()
        assert v("supervisord_info", version=version, identification="supervisor") == 1
        for i in range(2):
            lab = L(f"steady:steady_{i}")
            assert v("supervisord_process_state", **lab, state="RUNNING") == 1
            assert sum(v("supervisord_process_state", **lab, state=st) or 0 for st in STATES) == 1
            assert v("supervisord_process_restarts_total", **lab) == 0
            info = sup.info(f"steady:steady_{i}")
            assert v("supervisord_process_start_time_seconds", **lab) == pytest.approx(
                info["start"], abs=2
            )
            assert v("supervisord_process_memory_bytes", **lab) > 2e6
            assert v("supervisord_process_cpu_seconds_total", **lab) >= 0
        assert v("supervisord_process_restarts_total", **crash) >= 2
        assert v("supervisord_process_unexpected_exits_total", **crash) >= 3
        # supervisord resets the status on respawn; the exporter reads it from supervisord's
        # log ("exited: crash (exit status 3; not expected)") instead
        assert v("supervisord_process_exit_status", **crash) == 3
        assert v("supervisord_process_exit_status", **L("exit3")) == 3
        assert v("supervisord_process_state", **L("exit3"), state="EXITED") == 1
        assert v("supervisord_process_unexpected_exits_total", **L("exit3")) == 1
        assert v("supervisord_process_crash_looping", **L("steady:steady_0")) == 0
        fatal = L("fatal")
        assert v("supervisord_process_state", **fatal, state="FATAL") == 1
        # a start that failed before startsecs: supervisord reports 0, its own log says 4
        assert v("supervisord_process_exit_status", **fatal) == 4
        # Two BACKOFFs (startretries=1) stay under the 3/5m crash-loop rule.
        assert v("supervisord_process_crash_looping", **fatal) == 0
        leak = L("leak")
        assert v("supervisord_process_memory_limit_bytes", **leak) == 16 << 20
        assert v("supervisord_process_memory_restarts_total", **leak) == 1
        assert v("supervisord_process_memory_restarts_total", **crash) == 0
        assert v("supervisord_process_state", **L(NASTY), state="RUNNING") == 1
        assert v("supervisord_exporter_events_total") > 10
        assert v("supervisord_exporter_reconcile_errors_total") == 0
        names = {dict(k[1]).get("name") for k in s if k[0] == "supervisord_process_state"}
        # The exporter lists itself like every process supervisord has (issue 16).
        assert "exporter" in names

    def test_promtool_accepts_a_real_scrape(self, scenario):
        """promtool check metrics reports no problem on what the exporter serves."""
        _, port = scenario
        wait_for(lambda: value(port, "supervisord_process_fatal_total", **L("fatal")) == 1, 60)
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=fetch(port).encode(),
            capture_output=True,
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")

    def test_state_converges_after_an_exporter_restart(self, scenario):
        """A restarted exporter shows supervisord's states after its first reconcile."""
        sup, port = scenario
        sup.client.stop("exporter", wait=True)
        sup.client.stop("steady:steady_1", wait=True)
        sup.client.start("exporter", wait=True)

        def converged() -> bool:
            s = samples(fetch(port))
            for i in sup.client.all_process_info():
                if i["name"] == "exporter" or i["statename"] in ("STARTING", "BACKOFF", "EXITED"):
                    continue
                key = frozenset({**L(f"{i['group']}:{i['name']}"), "state": i["statename"]}.items())
                if s.get(("supervisord_process_state", key)) != 1:
                    return False
            return True

        wait_for(converged, 20, 0.3, what="states equal to getAllProcessInfo")
        lab = L("steady:steady_1")
        assert value(port, "supervisord_process_state", **lab, state="STOPPED") == 1

    def test_50_concurrent_scrapes_while_events_flow_are_complete_and_consistent(self, scenario):
        """Each of 50 parallel scrapes parses, ends with the last family, one state per process."""
        sup, port = scenario
        wait_for(lambda: value(port, "supervisord_process_restarts_total", **L("crash")), 20)
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            texts = list(pool.map(lambda _: fetch(port), range(50)))
        expected = {f"{i['group']}:{i['name']}" for i in sup.client.all_process_info()}
        for text in texts:
            assert text.endswith("\n")
            assert text.splitlines()[-1].startswith("supervisord_exporter_scrape_duration_seconds ")
            s = samples(text)
            per_proc: dict[tuple[str, str], float] = {}
            for (name, labels), val in s.items():
                if name == "supervisord_process_state":
                    d = dict(labels)
                    key = (d["group"], d["name"])
                    per_proc[key] = per_proc.get(key, 0) + val
            assert {f"{g}:{n}" for g, n in per_proc} == expected
            assert set(per_proc.values()) == {1.0}


STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class TestStatusPage:
    def test_status_page_renders_in_chromium_with_names_as_text(self, scenario, tmp_path):
        """Chromium shows every process; the <script> name is text, no script element exists."""
        sup, port = scenario
        limits = bus.MemoryLimits(host="h", limits={"leak:leak": 64 << 20})
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(limits))
        wait_for(lambda: value(port, "supervisord_process_memory_limit_bytes", **L("leak")), 20)
        url = f"http://127.0.0.1:{port}/"
        base = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        shot = tmp_path / "status.png"
        subprocess.run(
            ["chromium", *base, f"--screenshot={shot}", "--window-size=1000,700", url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        dom = subprocess.run(
            ["chromium", *base, "--dump-dom", url],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        assert shot.stat().st_size > 1000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for name in ("steady:steady_0", "steady:steady_1", "crash", "fatal", "leak", "exporter"):
            assert f">{name}</a></td>" in dom
        assert '&lt;script&gt;alert("x")&amp;amp;' in dom
        # Only the page's own same-origin script; the <script> name is text.
        assert 1 == dom.lower().count("<script")
        assert '<script src="/static/status.js" defer=""></script>' in dom
        assert 'href="/metrics"' in dom
        assert 'href="http://127.0.0.1:8080/"' in dom
        assert "/ 64.0MiB" in dom
        assert 'class="bar"' in dom


class TestSupervisordDown:
    def test_up_is_0_and_process_series_go_away_when_supervisord_stops(self, supervisord):
        """An exporter whose supervisord stops reports up 0 and drops per-process series."""
        sup: Supervisord = supervisord(
            f"[program:steady]\ncommand={PYTHON} {WORKER} steady\nstartsecs=0\n"
        )
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "listeners.exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--server-url={sup.url}",
                "--reconcile-interval=0.3s",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            wait_for(lambda: value(port, "supervisord_up") == 1, 20, what="up 1")
            assert value(port, "supervisord_process_state", **L("steady"), state="RUNNING") == 1
            sup.stop()
            wait_for(lambda: value(port, "supervisord_up") == 0, 20, what="up 0")
            text = fetch(port)
            assert "supervisord_process_" not in text
            assert value(port, "supervisord_exporter_reconcile_errors_total") >= 1
        finally:
            proc.terminate()
            proc.wait(10)


PROM_CONF = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: supervisord
    static_configs:
      - targets: ['127.0.0.1:{port}']
"""


class TestPrometheus:
    def test_prometheus_scrapes_and_sees_restarts_increase(self, supervisord, tmp_path):
        """The real Prometheus has the target up and restarts_total rising after crashes."""
        port = free_port()
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [program:crash]
            command={PYTHON} {WORKER} crash --after 2 --code 3
            startsecs=0
            startretries=100
            """)
            + exporter_conf(port)
        )
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 20, what="exporter serving")
        prom_port = free_port()
        (tmp_path / "prometheus.yml").write_text(PROM_CONF.format(port=port))
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def query(expr: str) -> list[Any]:
            q = urllib.parse.urlencode({"query": expr})
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?{q}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.load(resp)
            assert body["status"] == "success"
            return list(body["data"]["result"])

        def restarts() -> float | None:
            r = query('supervisord_process_restarts_total{group="crash",name="crash"}')
            return float(r[0]["value"][1]) if r else None

        try:
            up = wait_for(lambda: query('up{job="supervisord"} == 1'), 30, 0.5, what="target up")
            assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
            first = wait_for(lambda: (restarts() or 0) >= 1 and restarts(), 30, 0.5) or 0.0
            wait_for(lambda: (restarts() or 0) > first, 30, 0.5, what="restarts increase")
            assert (restarts() or 0) > first
            assert sup.state("crash") in ("RUNNING", "STARTING", "EXITED", "BACKOFF")
        finally:
            prom.terminate()
            prom.wait(20)
