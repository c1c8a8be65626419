"""The image, built with scripts/docker-local.sh and run for real on a private dockerd.

Skipped, with the reason, where that dockerd cannot start (no root, no docker.io); set
SL_REQUIRE_DOCKER=1 (CI does) to make that a failure instead.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import free_port, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker-local.sh"
DOCS = REPO / "docs" / "docker.md"
IMAGE = "supervisor-listeners-example:e2e"
LABEL = "sl-e2e"
RUN_DIR = "/app/example/docker/supervisord/run"
TASKS_DIR = "/app/example/docker/supervisord/tasks"
CONF = "/app/example/docker/supervisord/supervisord.conf"

#: A PHP worker of the test's own (the example's PHP workers come from example/ itself).
PHP_PROBE = "<?php\nwhile (true) { sleep(1); }\n"
PHP_PROBE_CONF = """[program:php_probe]
command=php /opt/probe/php_probe.php
autostart=true
autorestart=true
startsecs=1
"""


@dataclass
class Engine:
    """The docker client pointed at scripts/docker-local.sh's dockerd."""

    env: dict[str, str]
    started_here: bool
    volumes: list[str] = field(default_factory=list)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args[:2])} failed: {result.stderr.strip()[-800:]}")
        return result.stdout.strip()

    def volume(self) -> tuple[str, Path]:
        name = f"sl-e2e-{secrets.token_hex(4)}"
        self("volume", "create", "--label", LABEL, name)
        self.volumes.append(name)
        return name, Path(self("volume", "inspect", "-f", "{{.Mountpoint}}", name))


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    started = _script("start", timeout=120)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
        if os.environ.get("SL_REQUIRE_DOCKER") == "1":
            pytest.fail(f"dockerd cannot start and SL_REQUIRE_DOCKER=1: {reason}")
        pytest.skip(f"dockerd cannot start here: {reason}")
    sock = _script("env", timeout=10).stdout.strip().split("=", 1)[1]
    eng = Engine(env={**os.environ, "DOCKER_HOST": sock}, started_here="started" in started.stdout)
    yield eng
    ids = eng("ps", "-aq", "--filter", f"label={LABEL}", check=False).split()
    if ids:
        eng("rm", "-f", *ids, check=False)
    if eng.volumes:
        eng("volume", "rm", "-f", *eng.volumes, check=False)
    if eng.started_here:
        _script("stop", timeout=60)


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    t0 = time.monotonic()
    built = _script("build", IMAGE, timeout=840)
    assert 0 == built.returncode, built.stderr[-2000:]
    print(f"\nimage {IMAGE} built in {time.monotonic() - t0:.0f} s")
    return IMAGE


@dataclass
class Container:
    engine: Engine
    name: str
    exporter: str
    dashboard: str
    run_dir: Path

    def inspect(self, template: str) -> str:
        return self.engine("inspect", "-f", template, self.name)

    def health(self) -> str:
        return self.inspect("{{.State.Health.Status}}")

    def exec(self, *args: str, check: bool = True) -> str:
        # an exec'd process gets the container's env: blank the password in it
        return self.engine(
            "exec", "-e", "SUPERVISOR_DASHBOARD_PASSWORD=", self.name, *args, check=check
        )

    def alerts(self) -> list[dict[str, Any]]:
        path = self.run_dir / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


PASSWORD = f"e2e-docker-{secrets.token_hex(8)}"


def start_container(
    engine: Engine, image: str, volume: str, run_dir: Path, probe: Path
) -> Container:
    name = f"sl-e2e-{secrets.token_hex(4)}"
    exporter = f"127.0.0.1:{free_port()}"
    dashboard = f"127.0.0.1:{free_port()}"
    engine(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        LABEL,
        "--network",
        "host",
        "-e",
        f"EXPORTER_ADDRESS={exporter}",
        "-e",
        f"SUPERVISOR_DASHBOARD_ADDRESS={dashboard}",
        "-e",
        f"SUPERVISOR_DASHBOARD_PASSWORD={PASSWORD}",
        "-v",
        f"{volume}:{RUN_DIR}",
        "-v",
        f"{probe / 'php_probe.conf'}:{TASKS_DIR}/php_probe.conf:ro",
        "-v",
        f"{probe / 'php_probe.php'}:/opt/probe/php_probe.php:ro",
        image,
    )
    return Container(engine, name, exporter, dashboard, run_dir)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("php-probe")
    (d / "php_probe.php").write_text(PHP_PROBE)
    (d / "php_probe.conf").write_text(PHP_PROBE_CONF)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture(scope="module")
def volume(engine: Engine) -> tuple[str, Path]:
    return engine.volume()


@pytest.fixture(scope="module")
def first(engine: Engine, image: str, volume: tuple[str, Path], probe: Path) -> Container:
    c = start_container(engine, image, volume[0], volume[1], probe)
    t0 = time.monotonic()
    wait_for(lambda: c.health() == "healthy", 60, interval=0.5, what="container healthy")
    print(f"\nhealthy {time.monotonic() - t0:.1f} s after docker run")
    return c


@dataclass
class Stopped:
    exit_code: int
    seconds: float
    alerts: list[dict[str, Any]]


@pytest.fixture(scope="module")
def stopped_first(first: Container) -> Stopped:
    wait_for(
        lambda: any(a["kind"] == "memory_restart" for a in first.alerts()),
        90,
        interval=0.5,
        what="memory_restart alert before stopping",
    )
    t0 = time.monotonic()
    first.engine("stop", "-t", "10", first.name, timeout=60)
    seconds = time.monotonic() - t0
    code = int(first.inspect("{{.State.ExitCode}}"))
    print(f"\ndocker stop took {seconds:.1f} s, exit code {code}")
    return Stopped(code, seconds, first.alerts())


def dashboard_status(address: str, password: str | None) -> int:
    req = urllib.request.Request(f"http://{address}/")
    if password is not None:
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def statuses(c: Container) -> dict[str, str]:
    out = c.exec("supervisorctl", "-c", CONF, "status", check=False)
    return dict(re.findall(r"^(\S+)\s+([A-Z]+)", out, re.MULTILINE))


_SCAN_ENVIRON = (
    "import glob, os, sys\n"
    "pw = sys.argv[1].encode(); seen = 0; holders = []\n"
    "for p in glob.glob('/proc/[0-9]*/environ'):\n"
    "    try: data = open(p, 'rb').read()\n"
    "    except OSError: continue\n"
    "    seen += 1\n"
    "    if pw in data: holders.append(p)\n"
    "print(seen, ' '.join(holders))\n"
)


class TestExampleImage:
    def test_healthy_with_exporter_on_another_address(self, first):
        """Started with a non-default EXPORTER_ADDRESS the container turns healthy in a minute."""
        assert "healthy" == first.health()
        assert not first.exporter.endswith(":9876")

    def test_every_process_runs_as_uid_10001(self, first):
        """supervisord (PID 1), every worker and every listener run as uid 10001."""
        out = first.exec(
            "python3",
            "-c",
            "import glob, os; print(sorted({os.stat(p).st_uid for p in glob.glob('/proc/[0-9]*')}))",  # noqa: E501
        )
        assert "[10001]" == out
        assert "supervisord" in first.exec("cat", "/proc/1/cmdline")

    def test_php_workers_run_inside(self, first):
        """php is in the image and every PHP program (the probe among them) stays RUNNING."""
        assert first.exec("php", "-r", "echo PHP_VERSION;").startswith("8.")
        wait_for(
            lambda: statuses(first).get("php_probe") == "RUNNING",
            30,
            interval=0.5,
            what="php_probe RUNNING",
        )
        confs = first.exec("sh", "-c", f"grep -l '^command=php' {TASKS_DIR}/*.conf")
        assert f"{TASKS_DIR}/php_probe.conf" in confs.split()

    def test_no_process_environment_holds_the_dashboard_password(self, first):
        """Given with -e, the password works on the dashboard and is in no /proc/*/environ."""
        assert 401 == dashboard_status(first.dashboard, None)
        assert 200 == dashboard_status(first.dashboard, PASSWORD)
        seen, _, holders = first.exec("python3", "-c", _SCAN_ENVIRON, PASSWORD).partition(" ")
        assert int(seen) > 10
        assert "" == holders.strip()

    def test_memmon_restart_and_crash_alert_in_the_volume(self, first):
        """memmon restarts the leaking worker and crashmail reports it and the crash loop
        (with the example's --group-wait the looping worker's first crash joins its loop)."""

        def kinds() -> set[tuple[str, str]]:
            return {(a["kind"], a["group"]) for a in first.alerts()}

        wait_for(
            lambda: (
                {("memory_restart", "image_resizer"), ("crash_loop", "webhook_sender")} <= kinds()
            ),
            90,
            interval=0.5,
            what="memory_restart and crash_loop alerts",
        )


class TestContainerRestart:
    def test_docker_stop_exits_cleanly_with_the_outbox_intact(self, stopped_first, volume):
        """docker stop ends supervisord with status 0; the outbox is sound, every alert in it."""
        assert 0 == stopped_first.exit_code
        outbox = volume[1] / "crashmail-outbox.sqlite"
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            assert "ok" == db.execute("PRAGMA integrity_check").fetchone()[0]
            keys = {k for (k,) in db.execute("SELECT key FROM messages")}
            # The example has two sinks (file and SMTP): only the file sink's unfinished
            # deliveries are messages missing from alerts.jsonl.
            pending = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state != 'delivered' AND sink LIKE 'file:%'"
            )
            undelivered = pending.fetchone()[0]
        assert stopped_first.alerts
        assert len(keys) == len(stopped_first.alerts) + undelivered

    def test_second_run_on_the_volume_delivers_nothing_twice(
        self, engine, image, volume, probe, stopped_first
    ):
        """A new container on the same volume sends new alerts only, none of the first's again."""
        second = start_container(engine, image, volume[0], volume[1], probe)
        wait_for(lambda: second.health() == "healthy", 60, interval=0.5, what="second healthy")
        before = len(stopped_first.alerts)
        wait_for(lambda: len(second.alerts()) > before, 60, interval=0.5, what="a new alert")
        engine("stop", "-t", "10", second.name, timeout=60)
        every = second.alerts()
        assert stopped_first.alerts == every[:before]
        keys = [a["key"] for a in every]
        assert sorted(set(keys)) == sorted(keys)


def _docs_dockerfile() -> str:
    """The Dockerfile in docs/docker.md that adds the listeners to a php:*-cli image."""
    text = DOCS.read_text()
    marker = text.index("<!-- built by tests/e2e/test_docker_e2e.py -->")
    found = re.search(r"```dockerfile\n(.*?)```", text[marker:], re.DOTALL)
    assert found, "no ```dockerfile block after the marker in docs/docker.md"
    return found.group(1)


class TestPhpImagePath:
    def test_docs_snippet_adds_the_listeners_to_a_php_cli_image(self, engine, image, tmp_path):
        """The docs' Dockerfile builds on php:8.2-cli-bookworm; PHP and the four tools run."""
        dockerfile = _docs_dockerfile()
        assert dockerfile.startswith("FROM php:8.2-cli-bookworm")
        venv_python = REPO / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else "python3"
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(tmp_path / "dist"),
                str(REPO),
            ],
            check=True,
            timeout=300,
        )
        (tmp_path / "Dockerfile").write_text(dockerfile)
        tag = "sl-e2e-php-path:e2e"
        engine("build", "--network", "host", "-t", tag, str(tmp_path), timeout=600)
        tools = " && ".join(
            f"/opt/listeners/bin/supervisor-{t} --help >/dev/null"
            for t in ("memmon", "crashmail", "exporter", "tasks")
        )
        out = engine(
            "run",
            "--rm",
            "--label",
            LABEL,
            "--network",
            "host",
            tag,
            "sh",
            "-c",
            f"php -r 'echo PHP_VERSION, PHP_EOL;' && {tools} && "
            "/opt/listeners/bin/supervisord --version",
        )
        php_version, supervisord_version = out.splitlines()
        assert php_version.startswith("8.2.")
        assert supervisord_version.startswith("4.")
