"""supervisor-tasks against a real supervisord running a tasks/ + tasks_disabled/ layout."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from listeners import tasks
from tests.e2e.support import PYTHON, WORKER, Supervisord, small_tmpfs

ROOT = Path(__file__).parents[2]


def program(name: str, numprocs: int = 1, extra: str = "") -> str:
    return (
        f"[program:{name}]\n"
        f"command={PYTHON} {WORKER} steady\n"
        f"numprocs={numprocs}\n"
        "process_name=%(program_name)s_%(process_num)d\n"
        "startsecs=1\n"
        "stopwaitsecs=5\n"
        f"{extra}"
    )


@pytest.fixture
def stack(supervisord) -> Supervisord:
    """The example stack's shape: tasks/ and listeners.d/ included, tasks_disabled/ beside."""
    sup: Supervisord = supervisord(
        "",
        start=False,
        extra_conf="[include]\nfiles = tasks/*.conf listeners.d/*.conf\n",
    )
    for sub in ("tasks", "tasks_disabled", "listeners.d"):
        (sup.dir / sub).mkdir()
    (sup.dir / "tasks" / "mailer.conf").write_text(program("mailer", 2))
    (sup.dir / "tasks" / "indexer.conf").write_text(program("indexer"))
    (sup.dir / "listeners.d" / "other.conf").write_text(program("other"))
    (sup.dir / "tasks_disabled" / "reports.conf").write_text(program("reports"))
    sup.start()
    sup.wait_all("RUNNING")
    return sup


def run(sup: Supervisord, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = tasks.main(["-c", str(sup.conf), *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def pids(sup: Supervisord) -> dict[str, int]:
    return {f"{i['group']}:{i['name']}": i["pid"] for i in sup.client.all_process_info()}


def groups(sup: Supervisord) -> set[str]:
    return {i["group"] for i in sup.client.all_process_info()}


class TestDisableEnable:
    def test_disable_stops_and_removes_the_group_while_other_workers_keep_their_pids(self, stack):
        """Disabling mailer removes its group; indexer and other keep running, same pids."""
        before = pids(stack)

        code, out, err = run(stack, "disable", "mailer")

        assert (0, "") == (code, err)
        assert "removed group(s) mailer" in out
        assert {"indexer", "other"} == groups(stack)
        assert (stack.dir / "tasks_disabled" / "mailer.conf").is_file()
        assert not (stack.dir / "tasks" / "mailer.conf").exists()
        after = pids(stack)
        assert {k: before[k] for k in after} == after

    def test_enable_again_brings_it_back_running_and_touches_nothing_else(self, stack):
        """disable then enable --wait: mailer's processes are RUNNING, the others untouched."""
        assert 0 == run(stack, "disable", "mailer")[0]
        before = pids(stack)

        code, out, err = run(stack, "enable", "--wait", "mailer")

        assert (0, "") == (code, err)
        assert "added group(s) mailer" in out
        infos = {f"{i['group']}:{i['name']}": i for i in stack.client.all_process_info()}
        assert {"mailer:mailer_0": "RUNNING", "mailer:mailer_1": "RUNNING"} == {
            k: v["statename"] for k, v in infos.items() if k.startswith("mailer:")
        }
        assert before == {k: v["pid"] for k, v in infos.items() if not k.startswith("mailer:")}

    def test_enable_by_program_name_of_a_disabled_task(self, stack):
        """A program name works as NAME; enabling a second time is a no-op with exit 0."""
        assert 0 == run(stack, "enable", "--wait", "reports")[0]
        assert "RUNNING" == stack.state("reports:reports_0")

        code, out, _ = run(stack, "enable", "reports")

        assert 0 == code
        assert "already enabled" in out
        assert "RUNNING" == stack.state("reports:reports_0")

    def test_wait_reports_a_process_that_cannot_start(self, stack):
        """--wait names the FATAL process and supervisord's spawn error; exit 1."""
        (stack.dir / "tasks_disabled" / "ghost.conf").write_text(
            "[program:ghost]\ncommand=/nonexistent/ghost-binary\nstartretries=0\nstartsecs=1\n"
        )

        code, _, err = run(stack, "enable", "--wait", "--wait-timeout", "20", "ghost")

        assert 1 == code
        assert "ghost:ghost is FATAL" in err
        assert "/nonexistent/ghost-binary" in err

    def test_wait_reports_the_exit_status_of_a_start_that_fails_early(self, stack):
        """A program exiting 7 before startsecs is reported with 7, as supervisord logs it."""
        (stack.dir / "tasks_disabled" / "early.conf").write_text(
            f"[program:early]\ncommand={PYTHON} {WORKER} crash --after 0.2 --code 7\n"
            "startretries=1\nstartsecs=3\nautorestart=true\n"
        )

        code, _, err = run(stack, "enable", "--wait", "--wait-timeout", "30", "early")

        assert 1 == code
        assert "early:early is FATAL" in err
        assert "last exit status 7" in err
        assert "exit status 0" not in err
        assert 1 == err.count("Exited too quickly"), "spawn error and description said twice"


class TestRefusals:
    def test_a_broken_conf_is_refused_and_supervisord_is_untouched(self, stack):
        """A bad value and an unknown key: file stays disabled, nothing in supervisord moves."""
        broken = stack.dir / "tasks_disabled" / "broken.conf"
        broken.write_text(program("broken", extra="autorestart=sometimes\nlog_stdout=true\n"))
        before = pids(stack)

        code, out, err = run(stack, "enable", "broken")

        assert 1 == code
        assert "" == out
        assert f"{broken}:7: [program:broken] autorestart: invalid 'autorestart'" in err
        assert f"{broken}:8: [program:broken] log_stdout: unknown key" in err
        assert broken.is_file()
        assert not (stack.dir / "tasks" / "broken.conf").exists()
        assert before == pids(stack)

    def test_a_variable_supervisord_lacks_is_named_in_one_short_line(self, stack):
        """%(ENV_x)s that supervisord's environment lacks: the real CANT_REREAD lists every
        name it has; the error names the missing one and what to do, the file goes back."""
        odd = stack.dir / "tasks_disabled" / "envy.conf"
        odd.write_text("[program:envy]\ncommand=%(ENV_SL_NOT_SET_ANYWHERE)s\n")
        before = pids(stack)

        code, _out, err = run(stack, "enable", "envy")

        assert 1 == code
        (line,) = [ln for ln in err.splitlines() if ln.startswith("supervisor-tasks: error:")]
        assert "files moved back" in line
        assert "supervisord's environment has no SL_NOT_SET_ANYWHERE" in line
        assert len(line) < 700, line
        assert odd.is_file()
        assert before == pids(stack)

    @pytest.mark.parametrize(
        "name", ["../tasks/mailer", "tasks_disabled/reports", "..", "/etc/passwd", "nosuch"]
    )
    def test_path_like_or_unknown_names_are_refused(self, stack, name):
        """Exit 2, the error lists known names, no file moves and supervisord is untouched."""
        before = pids(stack)
        files = sorted(p.relative_to(stack.dir) for p in stack.dir.glob("tasks*/*"))

        code, out, err = run(stack, "disable", name)

        assert (2, "") == (code, out)
        assert "known: indexer, mailer, reports" in err
        assert files == sorted(p.relative_to(stack.dir) for p in stack.dir.glob("tasks*/*"))
        assert before == pids(stack)


class TestListAndCheck:
    def test_list_json_from_the_console_script_shows_live_states(self, stack):
        """`python -m listeners.tasks list --json` reports each task's processes and states."""
        result = subprocess.run(
            [PYTHON, "-m", "listeners.tasks", "-c", str(stack.conf), "list", "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=ROOT,
        )

        assert (0, "") == (result.returncode, result.stderr)
        doc = json.loads(result.stdout)
        by_name = {t["name"]: t for t in doc["tasks"]}
        assert True is doc["supervisord_reachable"]
        assert ["indexer", "mailer", "reports"] == sorted(by_name)
        assert [True, True, False] == [by_name[n]["enabled"] for n in sorted(by_name)]
        assert {("mailer", "mailer_0", "RUNNING"), ("mailer", "mailer_1", "RUNNING")} == {
            (p["group"], p["name"], p["state"]) for p in by_name["mailer"]["processes"]
        }
        assert 2 == by_name["mailer"]["programs"][0]["numprocs"]
        assert [] == by_name["reports"]["processes"]

    def test_check_finds_a_duplicate_program_and_an_unknown_key(self, stack):
        """check exits 1 naming the clash across files and the ignored key with its line."""
        (stack.dir / "tasks" / "copy.conf").write_text(program("indexer"))
        (stack.dir / "tasks_disabled" / "typo.conf").write_text(
            program("typo", extra="autostrat=false\n")
        )

        code, _, err = run(stack, "check")

        assert 1 == code
        assert f"{stack.dir}/tasks/copy.conf:1: [program:indexer]: duplicate name 'indexer'" in err
        assert f"{stack.dir}/tasks_disabled/typo.conf:7: [program:typo] autostrat:" in err
        assert "did you mean autostart?" in err

    def test_supervisord_down_moves_only_and_says_so(self, stack):
        """With supervisord stopped, disable moves the file and exits 3 with a warning."""
        stack.stop()

        code, out, err = run(stack, "disable", "indexer")

        assert 3 == code
        assert "moved" in out
        assert "files moved but not applied" in err
        assert (stack.dir / "tasks_disabled" / "indexer.conf").is_file()
        assert not (stack.dir / "tasks" / "indexer.conf").exists()


class TestSlowStopsAndBrokenFiles:
    def test_disable_of_a_stop_longer_than_the_rpc_timeout_is_done_not_rolled_back(self, stack):
        """stopwaitsecs 10, a 4 s stop, --rpc-timeout 2: the worker stops, its group is removed
        and the file stays disabled (no 'refused', no rollback)."""
        slow = program("slow", extra="stopwaitsecs=10\n").replace(
            f"{WORKER} steady", f"{WORKER} slow-stop --delay 4"
        )
        (stack.dir / "tasks_disabled" / "slow.conf").write_text(slow)
        assert 0 == run(stack, "enable", "slow", "--wait")[0]

        code, out, err = run(stack, "--rpc-timeout", "2", "disable", "slow")

        assert (0, "") == (code, err)
        assert "removed group(s) slow" in out
        assert "slow" not in groups(stack)
        assert (stack.dir / "tasks_disabled" / "slow.conf").is_file()
        assert not (stack.dir / "tasks" / "slow.conf").exists()

    def test_a_broken_file_in_tasks_is_named_and_blocks_nothing_silently(self, stack):
        """A missing ']' in tasks/: enable of another task names the file and moves nothing;
        list shows it BROKEN; disabling the broken file itself works."""
        (stack.dir / "tasks" / "broken.conf").write_text("[program:broken\ncommand=/bin/true\n")
        before = groups(stack)

        code, _, err = run(stack, "enable", "reports")

        assert 1 == code
        assert f"{stack.dir}/tasks/broken.conf is broken" in err
        assert "supervisor-tasks disable broken" in err
        assert before == groups(stack)
        assert (stack.dir / "tasks_disabled" / "reports.conf").is_file()
        _, out, _ = run(stack, "list")
        assert f"broken  enabled BROKEN  {stack.dir}/tasks/broken.conf" in out
        assert 0 == run(stack, "disable", "broken")[0]
        assert 0 == run(stack, "enable", "reports")[0]
        assert "reports" in groups(stack)


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of 32 inodes (needs root and mount); skipped where it cannot be mounted."""
    with small_tmpfs(tmp_path / "vol", "size=256k,nr_inodes=32") as where:
        yield where


def fill_up(volume: Path) -> list[Path]:
    """Take every block and every inode of ``volume``; the files made, to free it again."""
    made = [volume / "filler"]
    fd = os.open(made[0], os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    with contextlib.suppress(OSError):
        while True:
            made.append(volume / f"inode{len(made)}")
            made[-1].touch()
    return made


class TestFullDisk:
    def test_disable_on_a_full_disk_moves_and_stops_nothing_and_works_once_there_is_room(
        self, supervisord, small_volume
    ):
        """No room even for tasks_disabled/: one clear error, the worker keeps running."""
        include = f"[include]\nfiles = {small_volume}/tasks/*.conf\n"
        sup: Supervisord = supervisord("", start=False, extra_conf=include)
        (small_volume / "tasks").mkdir()
        conf = small_volume / "tasks" / "indexer.conf"
        conf.write_text(program("indexer"))
        sup.start()
        sup.wait_all("RUNNING")
        before = pids(sup)
        fillers = fill_up(small_volume)
        dirs = ["--tasks-dir", str(small_volume / "tasks")]
        dirs += ["--disabled-dir", str(small_volume / "tasks_disabled")]

        code, out, err = run(sup, *dirs, "disable", "indexer")

        assert (1, "") == (code, out)
        assert "error: cannot move: [Errno 28] No space left on device" in err
        assert "nothing was moved" in err
        assert conf.is_file()
        assert before == pids(sup)
        for filler in fillers:
            filler.unlink(missing_ok=True)

        code, out, err = run(sup, *dirs, "disable", "indexer")

        assert 0 == code, err
        assert (small_volume / "tasks_disabled" / "indexer.conf").is_file()
        assert "indexer" not in groups(sup)
