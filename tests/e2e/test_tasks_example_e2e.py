"""supervisor-tasks against the example stack exactly as shipped, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.example_stack import ExampleStack
from tests.e2e.support import wait_for


@pytest.fixture
def stack() -> Iterator[ExampleStack]:
    s = ExampleStack().start()
    yield s
    s.cleanup()


def tasks_cli(stack: ExampleStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script's code path, as `supervisor-tasks -c <example conf> ...` typed in a
    shell that lacks the variables only supervisord's own environment has (the dashboard's
    address and password)."""
    shell = {k: v for k, v in stack.env.items() if not k.startswith(("SUPERVISOR_", "EXPORTER_"))}
    return subprocess.run(
        [sys.executable, "-m", "listeners.tasks", "-c", str(stack.conf), *args],
        capture_output=True,
        text=True,
        env=shell,
        timeout=120,
        check=False,
    )


def pids(stack: ExampleStack) -> dict[str, int]:
    return {f"{i['group']}:{i['name']}": i["pid"] for i in stack.client.all_process_info()}


class TestTasksOnTheExampleStack:
    def test_disable_then_enable_mail_sender_leaves_other_workers_alone(self, stack):
        """disable stops and removes mail_sender only; enable --wait brings it back RUNNING."""
        wait_for(
            lambda: all(p for k, p in pids(stack).items() if k.startswith("mail_sender:")),
            30,
            what="mail_sender running",
        )
        steady = {
            k: p
            for k, p in pids(stack).items()
            if k.split(":")[0] in ("crashmail", "exporter", "memmon")
        }
        result = tasks_cli(stack, "disable", "mail_sender")
        assert 0 == result.returncode, result.stderr
        assert (stack.dir / "tasks_disabled" / "mail_sender.conf").exists()
        assert not (stack.dir / "tasks" / "mail_sender.conf").exists()
        assert not any(k.startswith("mail_sender:") for k in pids(stack))
        after = pids(stack)
        assert steady == {k: after[k] for k in steady}

        result = tasks_cli(stack, "enable", "--wait", "mail_sender")
        assert 0 == result.returncode, result.stderr
        states = {
            i["name"]: i["statename"]
            for i in stack.client.all_process_info()
            if i["group"] == "mail_sender"
        }
        assert {f"mail_sender_{n}": "RUNNING" for n in range(4)} == states
        after = pids(stack)
        assert steady == {k: after[k] for k in steady}

    def test_list_json_shows_the_shipped_tasks_with_live_states(self, stack):
        """list --json names every shipped task, enabled or not, with live process states."""
        wait_for(
            lambda: (
                stack.client.process_info("mail_sender:mail_sender_0")["statename"] == "RUNNING"
            ),
            30,
            what="mail_sender_0 RUNNING",
        )
        result = tasks_cli(stack, "list", "--json")
        assert 0 == result.returncode, result.stderr
        listing = json.loads(result.stdout)
        text = json.dumps(listing)
        for task in (
            "mail_sender",
            "queue_consumer",
            "image_resizer",
            "webhook_sender",
            "report_builder",
        ):
            assert task in text
        assert "RUNNING" in text

    def test_path_traversal_and_broken_conf_are_refused(self, stack):
        """A path-like name is refused; a broken conf is not moved and supervisord is untouched."""
        before = pids(stack)
        result = tasks_cli(stack, "enable", "../tasks/mail_sender")
        assert 2 == result.returncode
        broken = stack.dir / "tasks_disabled" / "broken.conf"
        broken.write_text("[program:broken]\ncommand=python3 -c pass\nnumprocs=two\n")
        result = tasks_cli(stack, "enable", "broken")
        assert 1 == result.returncode
        assert "numprocs" in result.stderr
        assert broken.exists()
        assert not (stack.dir / "tasks" / "broken.conf").exists()
        assert set(before) == set(pids(stack))
