"""The example stack starts from its conf as shipped."""

from __future__ import annotations

import base64
import configparser
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.example_stack import PASSWORD, STACK, ExampleStack
from tests.e2e.support import BAD_LOG_LINES, wait_for


def programs_in(directory: str) -> dict[str, int]:
    """program name -> numprocs of every conf in tasks/ or tasks_disabled/."""
    found = {}
    for path in sorted((STACK / directory).glob("*.conf")):
        parser = configparser.RawConfigParser()
        parser.read(path)
        for section in parser.sections():
            if section.startswith("program:"):
                found[section.removeprefix("program:")] = parser.getint(
                    section, "numprocs", fallback=1
                )
    return found


@pytest.fixture(scope="module")
def stack() -> Iterator[ExampleStack]:
    s = ExampleStack().start()
    yield s
    log = s.log_text()
    s.cleanup()
    bad = [ln for ln in log.splitlines() if any(b in ln for b in BAD_LOG_LINES)]
    assert [] == bad


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)  # noqa: S310 - fixed loopback URL
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class TestExampleStack:
    def test_every_task_in_tasks_reaches_running(self, stack):
        """Each program in tasks/ runs all its numprocs processes."""
        expected = programs_in("tasks")
        assert len(expected) >= 2
        assert any(n > 1 for n in expected.values())

        def all_seen_running() -> bool:
            infos = stack.client.all_process_info()
            running = [i for i in infos if i["statename"] == "RUNNING" or i["start"] > 0]
            counts: dict[str, int] = {}
            for i in running:
                counts[i["group"]] = counts.get(i["group"], 0) + 1
            return all(counts.get(p, 0) == n for p, n in expected.items())

        wait_for(all_seen_running, 30, what="every task RUNNING")
        infos = stack.client.all_process_info()
        for program, numprocs in expected.items():
            assert numprocs == sum(1 for i in infos if i["group"] == program)

    def test_nothing_from_tasks_disabled_exists(self, stack):
        """Programs kept in tasks_disabled/ are not loaded at all."""
        disabled = programs_in("tasks_disabled")
        assert disabled
        groups = {i["group"] for i in stack.client.all_process_info()}
        assert set() == groups & set(disabled)

    def test_dashboard_asks_for_the_password(self, stack):
        """8080 answers 401 without credentials and 200 with them, on loopback."""
        assert 401 == get("http://127.0.0.1:8080/")
        assert 401 == get("http://127.0.0.1:8080/", ("admin", "wrong"))
        assert 200 == get("http://127.0.0.1:8080/", ("admin", PASSWORD))

    def test_dashboard_binds_loopback_only(self):
        """The shipped conf never binds the dashboard to every interface."""
        parser = configparser.RawConfigParser()
        parser.read(STACK / "supervisord.conf")
        assert parser.get("inet_http_server", "port").startswith("127.0.0.1:")
        assert "%(ENV_" in parser.get("inet_http_server", "password")
