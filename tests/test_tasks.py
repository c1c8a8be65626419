"""supervisor-tasks: name resolution, validation messages, moves, apply and rollback."""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listeners import tasks
from listeners.core.supervisor import RPCFault, SupervisorError
from listeners.taskfiles import toggle
from listeners.taskfiles.check import validate_file
from listeners.taskfiles.files import discover, resolve, scan_sections
from listeners.taskfiles.layout import ConfError, NameRefused, Section, Task, load_layout
from tests import fakes
from tests.fakes import FakeClock

MAIN = """\
[unix_http_server]
file=%(here)s/run/supervisor.sock
username=admin
password=s3cret

[supervisord]
logfile=%(here)s/run/supervisord.log

[supervisorctl]
serverurl=unix://%(here)s/run/supervisor.sock

[include]
files = tasks/*.conf listeners.d/*.conf
"""


def prog(name: str, extra: str = "") -> str:
    return f"[program:{name}]\ncommand=/bin/sleep 100\n{extra}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A conf dir shaped like the example stack, with two enabled tasks and one disabled."""
    for sub in ("tasks", "tasks_disabled", "listeners.d", "run"):
        (tmp_path / sub).mkdir()
    (tmp_path / "supervisord.conf").write_text(MAIN)
    (tmp_path / "tasks" / "mailer.conf").write_text(prog("mailer"))
    (tmp_path / "tasks" / "indexer.conf").write_text(prog("indexer"))
    (tmp_path / "tasks_disabled" / "reports.conf").write_text(prog("reports"))
    (tmp_path / "listeners.d" / "memmon.conf").write_text(
        "[eventlistener:memmon]\ncommand=/bin/cat\nevents=TICK_60\n"
    )
    return tmp_path


class FakeSupervisor(fakes.FakeSupervisor):
    """The shared fake, with reread+update over the files of tasks/ (one [program:<stem>] each).

    ``states`` are the states every process shows on successive polls; ``exitstatus`` is what
    getProcessInfo says (0 for a start that failed before startsecs, as supervisord does) and
    ``log`` (inherited) is supervisord's own log, where the real status is.
    """

    def __init__(
        self,
        home: Path,
        *,
        down: bool = False,
        fail_update: int = 0,
        states: list[str] | None = None,
        ignore: bool = False,
        stop_polls: int = 1,
    ) -> None:
        super().__init__()
        self.home = home
        self.down = down
        self.fail_update = fail_update
        self.states = states or ["RUNNING"]
        self.ignore = ignore
        self.groups = {p.stem for p in (home / "tasks").glob("*.conf")}
        self.polls = 0
        self.stop_polls = stop_polls  # how many polls a stopping group stays STOPPING
        self.stopping: dict[str, int] = {}

    def state(self) -> str:
        self.calls.append(("state", ()))
        if self.down:
            raise SupervisorError("cannot reach supervisord at unix:///x.sock: No such file")
        return "RUNNING"

    def all_process_info(self) -> list[dict[str, Any]]:
        self._record("all_process_info")
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        for g, left in self.stopping.items():
            self.stopping[g] = left - 1
        return [
            {
                "group": g,
                "name": g,
                "statename": state
                if g not in self.stopping
                else ("STOPPING" if self.stopping[g] >= 0 else "STOPPED"),
                "pid": 100,
                "spawnerr": "can't find command" if state == "FATAL" else "",
                "exitstatus": 0,
                "description": "",
            }
            for g in sorted(self.groups)
        ]

    def stop_group(self, group: str, *, wait: bool = True) -> None:
        self._record("stop_group", group, wait)
        self.stopping[group] = self.stop_polls

    def update(self, only: Any = None) -> dict[str, list[str]]:
        wanted = sorted(only or [])
        self._record("update", wanted)
        if self.fail_update:
            self.fail_update -= 1
            raise RPCFault(91, "STILL_RUNNING", "supervisor.removeProcessGroup")
        done: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        if self.ignore:
            return done
        on_disk = {p.stem for p in (self.home / "tasks").glob("*.conf")}
        for g in wanted:
            if g in on_disk and g not in self.groups:
                self.groups.add(g)
                done["added"].append(g)
            elif g not in on_disk and g in self.groups:
                self.groups.discard(g)
                done["removed"].append(g)
        return done


def run(home: Path, client: Any, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = tasks.main(
        ["-c", str(home / "supervisord.conf"), *args], out=out, err=err, client=client
    )
    return code, out.getvalue(), err.getvalue()


def task(name: str, *programs: str, enabled: bool = True) -> Task:
    sections = tuple(Section("program", p, 1) for p in programs)
    return Task(name, Path(f"/x/{name}.conf"), enabled, sections)


class TestResolve:
    TASKS = (
        task("mailer", "mailer"),
        task("pair", "left", "right"),
        task("old", "x", enabled=False),
    )

    def test_a_file_stem_names_its_task(self):
        """NAME equal to a file's stem picks that file."""
        assert [self.TASKS[1]] == resolve(["pair"], self.TASKS)

    def test_a_program_name_names_the_task_that_defines_it(self):
        """NAME equal to a program in a file picks that file, once even if named twice."""
        assert [self.TASKS[1]] == resolve(["right", "left", "pair"], self.TASKS)

    @pytest.mark.parametrize("name", ["../mailer", "tasks/mailer", "..", ".hidden", "", "a\\b"])
    def test_path_like_names_are_refused_with_the_known_names(self, name):
        """Anything that could leave the dir is refused, listing what NAME may be."""
        with pytest.raises(NameRefused) as info:
            resolve([name], self.TASKS)
        assert "not a path (known: left, mailer, old, pair, right, x)" in str(info.value)

    def test_an_unknown_name_is_refused_with_the_known_names(self):
        """A typo gets the list of task and program names."""
        with pytest.raises(NameRefused) as info:
            resolve(["mailr"], self.TASKS)
        assert "no task or program named 'mailr' (known: left, mailer, old" in str(info.value)

    def test_a_program_in_two_files_is_ambiguous(self):
        """Two files defining one program: refuse rather than guess."""
        both = (task("a", "dup"), task("b", "dup"))
        with pytest.raises(NameRefused, match=r"'dup' is ambiguous: it is in /x/a.conf, /x/b.conf"):
            resolve(["dup"], both)


class TestValidateFile:
    def check(self, home: Path, text: str) -> list[str]:
        path = home / "tasks_disabled" / "t.conf"
        path.write_text(textwrap.dedent(text))
        layout = load_layout(home / "supervisord.conf")
        return [str(p).replace(str(path), "t.conf") for p in validate_file(layout, path)]

    def test_a_good_file_has_no_problems(self, home):
        """A plain program section passes supervisord's parser."""
        assert [] == self.check(
            home, prog("ok", "numprocs=2\nprocess_name=%(program_name)s_%(process_num)d\n")
        )

    def test_an_unknown_key_is_named_with_its_line_and_a_hint(self, home):
        """supervisord ignores unknown keys silently; we name them, with a close match."""
        assert [
            "t.conf:3: [program:t] autorestrat: unknown key (supervisord would ignore it);"
            " did you mean autorestart?"
        ] == self.check(home, "[program:t]\ncommand=/bin/true\nautorestrat=true\n")

    def test_a_bad_value_names_the_key_and_its_line(self, home):
        """supervisord's own message, placed at the key that causes it."""
        text = "[program:t]\ncommand=/bin/true\nautostart=true\nstartsecs=soon\n"
        assert [
            "t.conf:4: [program:t] startsecs: invalid literal for int() with base 10: 'soon'"
        ] == self.check(home, text)

    def test_a_missing_command_points_at_the_section(self, home):
        """No command: the header line and the key that is missing."""
        assert [
            "t.conf:2: [program:t] command: program section program:t does not specify a command"
        ] == self.check(home, "\n[program:t]\nautostart=false\n")

    def test_numprocs_without_process_num_is_refused(self, home):
        """supervisord's numprocs rule, placed at a line of that section."""
        problems = self.check(home, "[program:t]\ncommand=/bin/true\nnumprocs=3\n")
        assert 1 == len(problems)
        assert problems[0].startswith("t.conf:3: [program:t] numprocs: %(process_num) must be")

    def test_a_main_conf_section_in_a_task_file_is_refused(self, home):
        """[supervisord] in a task file would override the main conf: refuse it."""
        assert [
            "t.conf:1: [supervisord]: a task file may only hold [program:x], [group:x],"
            " [eventlistener:x] or [fcgi-program:x] sections"
        ] == self.check(home, "[supervisord]\nlogfile=/tmp/x\n")

    def test_a_section_defined_twice_in_one_file_is_refused(self, home):
        """configparser would merge the two sections silently."""
        problems = self.check(home, prog("t") + "\n" + prog("t"))
        assert [
            "t.conf:4: [program:t]: defined twice in this file (first on line 1);"
            " supervisord would merge the two silently"
        ] == problems

    def test_a_line_that_is_not_ini_is_named(self, home):
        """A stray line gets its line number instead of a traceback."""
        assert ["t.conf:3: cannot parse line 'oops'"] == self.check(
            home, "[program:t]\ncommand=/bin/true\noops\n"
        )


class TestScanSections:
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
    def test_never_raises_on_any_text(self, text):
        """Whatever a file holds, scanning reports problems instead of raising."""
        sections, problems = scan_sections(Path("x.conf"), text)
        assert all(s.line >= 1 for s in sections)
        assert all(p.line is None or p.line >= 1 for p in problems)

    @given(
        st.lists(
            st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True), min_size=1, max_size=8, unique=True
        )
    )
    def test_each_key_is_found_on_its_line(self, keys):
        """Key i of a generated section is on line i + 2 (the header is line 1)."""
        text = "[program:p]\n" + "".join(f"{k} = v{i}\n" for i, k in enumerate(keys))
        sections, problems = scan_sections(Path("x.conf"), text)
        assert [] == problems
        assert {k: i + 2 for i, k in enumerate(keys)} == dict(sections[0].key_lines)
        assert {k: f"v{i}" for i, k in enumerate(keys)} == dict(sections[0].values)


class TestLoadLayout:
    def test_the_tasks_glob_is_picked_among_several(self, home):
        """`tasks/*.conf listeners.d/*.conf`: tasks/ wins; the disabled dir is beside it."""
        layout = load_layout(home / "supervisord.conf")
        assert (home / "tasks", home / "tasks_disabled", "*.conf") == (
            layout.tasks_dir,
            layout.disabled_dir,
            layout.pattern,
        )

    def test_a_dir_with_a_tasks_disabled_sibling_counts_as_the_tasks_dir(self, home):
        """A differently named dir is found through its tasks_disabled/ sibling."""
        text = MAIN.replace("tasks/*.conf listeners.d/*.conf", "workers/*.ini")
        (home / "supervisord.conf").write_text(text)
        layout = load_layout(home / "supervisord.conf")
        assert (home / "workers", "*.ini") == (layout.tasks_dir, layout.pattern)

    def test_two_dirs_beside_tasks_disabled_are_ambiguous(self, home):
        """With no tasks/ glob, two candidate dirs ask for --tasks-dir instead of guessing."""
        (home / "supervisord.conf").write_text(MAIN.replace("tasks/*.conf", "workers/*.ini"))
        with pytest.raises(ConfError, match=r"several \[include\] globs could be the tasks dir"):
            load_layout(home / "supervisord.conf")

    def test_flags_override_both_dirs(self, home):
        """--tasks-dir and --disabled-dir win over the conf."""
        layout = load_layout(home / "supervisord.conf", home / "a", home / "b")
        assert (home / "a", home / "b") == (layout.tasks_dir, layout.disabled_dir)

    def test_no_tasks_glob_is_an_error_naming_the_globs(self, home):
        """Without a tasks include the error lists the globs and suggests --tasks-dir."""
        (home / "supervisord.conf").write_text(MAIN.replace("tasks/*.conf ", ""))
        shutil.rmtree(home / "tasks_disabled")
        with pytest.raises(ConfError, match=r"no \[include\] files= glob names a tasks dir"):
            load_layout(home / "supervisord.conf")

    def test_server_and_credentials_come_from_the_conf(self, home):
        """serverurl with %(here)s expanded; credentials of the matching unix server section."""
        layout = load_layout(home / "supervisord.conf")
        assert (f"unix://{home}/run/supervisor.sock", "admin", "s3cret") == (
            layout.url,
            layout.username,
            layout.password,
        )
        assert "s3cret" not in repr(layout)

    def test_without_supervisorctl_the_unix_server_is_used(self, home):
        """No [supervisorctl]: the [unix_http_server] file is the address."""
        text = MAIN.replace("[supervisorctl]\nserverurl=unix://%(here)s/run/supervisor.sock\n", "")
        (home / "supervisord.conf").write_text(text)
        assert f"unix://{home}/run/supervisor.sock" == load_layout(home / "supervisord.conf").url

    def test_a_missing_conf_is_a_usage_error(self, home):
        """-c naming nothing: exit 2 with the path."""
        out, err = io.StringIO(), io.StringIO()
        code = tasks.main(["-c", str(home / "nope.conf"), "list"], out=out, err=err, client=None)
        assert (2, f"supervisor-tasks: error: no supervisord conf at {home}/nope.conf\n") == (
            code,
            err.getvalue(),
        )


class TestArgs:
    @pytest.mark.parametrize(
        "args",
        [
            ["enable", "--wait-timeout", "soon", "x"],
            ["enable", "--wait-timeout", "-1", "x"],
            ["-s", "ftp://host", "list"],
            ["disable"],
            ["frobnicate"],
        ],
    )
    def test_bad_flags_exit_2(self, home, args, capsys):
        """A bad flag is a usage error naming the value."""
        with pytest.raises(SystemExit) as info:
            tasks.main(["-c", str(home / "supervisord.conf"), *args])
        assert 2 == info.value.code
        assert "error:" in capsys.readouterr().err


class TestToggle:
    def test_disable_moves_the_file_and_updates_only_its_group(self, home):
        """The file goes to tasks_disabled/ and update is limited to its group."""
        fake = FakeSupervisor(home)
        code, out, err = run(home, fake, "disable", "mailer")
        assert (0, "") == (code, err)
        assert (home / "tasks_disabled" / "mailer.conf").is_file()
        assert ("update", (["mailer"],)) in fake.calls
        assert {"indexer"} == fake.groups
        assert "supervisord: removed group(s) mailer" in out

    def test_enable_moves_the_file_and_adds_its_group(self, home):
        """The file goes to tasks/ and supervisord adds the group."""
        fake = FakeSupervisor(home)
        code, _out, _ = run(home, fake, "enable", "reports")
        assert 0 == code
        assert (home / "tasks" / "reports.conf").is_file()
        assert {"indexer", "mailer", "reports"} == fake.groups

    def test_twice_is_a_no_op_with_a_message(self, home):
        """Disabling a disabled task moves nothing and exits 0."""
        fake = FakeSupervisor(home)
        code, out, _ = run(home, fake, "disable", "reports")
        assert 0 == code
        assert "reports: already disabled" in out
        assert (home / "tasks_disabled" / "reports.conf").is_file()

    def test_no_apply_only_moves(self, home):
        """--no-apply never talks to supervisord."""
        fake = FakeSupervisor(home)
        code, _, _ = run(home, fake, "disable", "--no-apply", "mailer", "indexer")
        assert 0 == code
        assert [] == fake.calls
        assert ["indexer.conf", "mailer.conf", "reports.conf"] == sorted(
            p.name for p in (home / "tasks_disabled").iterdir()
        )

    def test_supervisord_down_moves_and_exits_3(self, home):
        """Unreachable supervisord: the file is moved, the warning says it was not applied."""
        fake = FakeSupervisor(home, down=True)
        code, _, err = run(home, fake, "disable", "mailer")
        assert 3 == code
        assert "files moved but not applied: cannot reach supervisord" in err
        assert (home / "tasks_disabled" / "mailer.conf").is_file()

    def test_a_no_op_with_supervisord_down_exits_0(self, home):
        """Nothing to move and supervisord down: still a no-op, exit 0, with a warning."""
        code, out, err = run(home, FakeSupervisor(home, down=True), "enable", "mailer")
        assert 0 == code
        assert "mailer: already enabled" in out
        assert "nothing moved, and supervisord not checked" in err

    def test_list_text_shows_programs_and_live_processes(self, home):
        """The plain list names each task, its programs, and its processes' states."""
        code, out, _ = run(home, FakeSupervisor(home), "list")
        assert 0 == code
        assert [
            f"indexer  enabled  {home}/tasks/indexer.conf",
            "  program indexer  numprocs=1  command=/bin/sleep 100",
            "    indexer:indexer  RUNNING  ",
        ] == out.splitlines()[:3]
        assert f"reports  disabled  {home}/tasks_disabled/reports.conf" in out

    def test_a_refused_update_rolls_the_move_back(self, home):
        """supervisord's fault is reported, the file is back, and supervisord is re-synced."""
        fake = FakeSupervisor(home, fail_update=1)
        code, _out, err = run(home, fake, "disable", "mailer")
        assert 1 == code
        assert (home / "tasks" / "mailer.conf").is_file()
        assert not (home / "tasks_disabled" / "mailer.conf").exists()
        assert (
            "error: supervisord refused the change, files moved back: supervisord answered"
            " supervisor.removeProcessGroup with fault 91 STILL_RUNNING"
        ) in err
        assert [("update", (["mailer"],)), ("update", (["mailer"],))] == [
            c for c in fake.calls if c[0] == "update"
        ]

    def test_several_names_roll_back_together(self, home):
        """All moved files go back when the one update fails."""
        fake = FakeSupervisor(home, fail_update=2)
        code, _, err = run(home, fake, "disable", "mailer", "indexer")
        assert 1 == code
        assert ["indexer.conf", "mailer.conf"] == sorted(p.name for p in (home / "tasks").iterdir())
        assert "could not re-sync supervisord after the rollback" in err

    def test_a_supervisord_that_ignores_the_change_is_rolled_back(self, home):
        """If the group is still there after update (another conf?), the move is undone."""
        fake = FakeSupervisor(home, ignore=True)
        code, _, err = run(home, fake, "disable", "mailer")
        assert 1 == code
        assert "still has group(s) mailer; is it running with" in err
        assert (home / "tasks" / "mailer.conf").is_file()

    def test_an_invalid_conf_is_not_enabled_and_supervisord_is_not_called(self, home):
        """Validation fails before any move or RPC; the error names file, line and key."""
        bad = home / "tasks_disabled" / "reports.conf"
        bad.write_text(prog("reports", "autorestart=sometimes\n"))
        fake = FakeSupervisor(home)
        code, out, err = run(home, fake, "enable", "reports")
        assert (1, "", []) == (code, out, fake.calls)
        assert f"{bad}:3: [program:reports] autorestart: invalid 'autorestart' value" in err
        assert bad.is_file()

    def test_a_clash_with_an_enabled_program_is_not_enabled(self, home):
        """A program already defined in tasks/ (or the main conf's includes) blocks enable."""
        (home / "tasks_disabled" / "copy.conf").write_text(prog("memmon"))
        code, _, err = run(home, FakeSupervisor(home), "enable", "copy")
        assert 1 == code
        assert "duplicate name 'memmon': also defined in" in err
        assert "listeners.d/memmon.conf:1" in err

    def test_the_same_file_name_in_both_dirs_is_ambiguous(self, home):
        """Same file name in both dirs: refuse (exit 2) and keep both files."""
        (home / "tasks_disabled" / "mailer.conf").write_text(prog("mailer2"))
        code, _, err = run(home, FakeSupervisor(home), "disable", "mailer")
        assert 2 == code
        assert "'mailer' is ambiguous" in err
        assert "mailer2" in (home / "tasks_disabled" / "mailer.conf").read_text()
        assert (home / "tasks" / "mailer.conf").is_file()

    def test_a_move_never_overwrites_and_undoes_earlier_moves(self, home, monkeypatch):
        """If the second target exists, the first move is undone and nothing is replaced."""
        real = toggle._move_no_clobber
        wrote: list[Path] = []

        def move(src: Path, dst: Path) -> None:
            real(src, dst)
            if not wrote:  # another shell writes the second target between the two moves
                other = "indexer.conf" if src.name == "mailer.conf" else "mailer.conf"
                wrote.append(dst.parent / other)
                wrote[0].write_text("keep me")

        monkeypatch.setattr(toggle, "_move_no_clobber", move)
        fake = FakeSupervisor(home)
        code, _, err = run(home, fake, "disable", "mailer", "indexer")
        assert 1 == code
        assert "already exists; refusing to overwrite it; nothing was moved" in err
        assert (home / "tasks" / "mailer.conf").is_file()
        assert (home / "tasks" / "indexer.conf").is_file()
        assert "keep me" == wrote[0].read_text()
        assert [] == [c for c in fake.calls if "update" in c[0] or "reread" in c[0]]

    def test_a_move_that_fails_and_cannot_be_put_back_says_which_file_is_where(
        self, home, monkeypatch
    ):
        """A full disk on the second move and on the way back: no false "nothing was moved"."""
        real = toggle._move_no_clobber
        calls: list[tuple[str, str]] = []

        def move(src: Path, dst: Path) -> None:
            calls.append((src.parent.name, dst.parent.name))
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            real(src, dst)

        monkeypatch.setattr(toggle, "_move_no_clobber", move)
        fake = FakeSupervisor(home)
        code, out, err = run(home, fake, "disable", "mailer", "indexer")
        assert (1, "") == (code, out)
        assert "nothing was moved" not in err
        assert "No space left on device; left moved:" in err
        moved = next(p for p in (home / "tasks_disabled").iterdir() if p.name != "reports.conf")
        assert f"{moved} (could not move it back to {home / 'tasks' / moved.name}" in err
        assert "supervisord was not changed" in err
        assert [] == [c for c in fake.calls if "update" in c[0] or "reread" in c[0]]


class TestWait:
    def make(self, home: Path, states: list[str]) -> tuple[tasks.Tool, FakeSupervisor]:
        fake = FakeSupervisor(home, states=states)
        opts = tasks.parse_args(["-c", str(home / "supervisord.conf"), "enable", "--wait", "x"])
        clock = FakeClock(0.0)
        out, err = io.StringIO(), io.StringIO()
        layout = load_layout(home / "supervisord.conf")
        return tasks.Tool(opts, layout, fake, out, err, clock, clock.sleep), fake

    def test_waits_until_running(self, home):
        """STARTING then RUNNING: exit 0 once every process runs."""
        tool, fake = self.make(home, ["STARTING", "STARTING", "RUNNING"])
        assert 0 == tool._wait_running(["mailer"], {"mailer"})
        assert 3 == fake.polls

    def test_fatal_is_reported_with_the_spawn_error(self, home):
        """FATAL ends the wait at once, naming the process and why."""
        tool, _ = self.make(home, ["STARTING", "FATAL"])
        assert 1 == tool._wait_running(["mailer"], {"mailer"})
        assert "mailer:mailer is FATAL; spawn error: can't find command" in tool.err.getvalue()

    @pytest.mark.parametrize("states", [["STARTING", "FATAL"], ["BACKOFF"]])
    def test_a_start_that_failed_early_reports_the_status_from_supervisords_log(self, home, states):
        """getProcessInfo says 0 before startsecs; the log's ``exited:`` line says 7."""
        tool, fake = self.make(home, states)
        fake.log = (
            "2026-12-03 06:00:00,001 INFO exited: mailer (exit status 3; not expected)\n"
            "2026-12-03 06:00:00,002 INFO exited: indexer (exit status 9; not expected)\n"
            "2026-12-03 06:00:01,001 INFO exited: mailer (exit status 7; not expected)\n"
        )
        assert 1 == tool._wait_running(["mailer"], {"mailer"})
        err = tool.err.getvalue()
        assert "last exit status 7" in err
        assert "exit status 0" not in err
        assert ("supervisor.readLog", (-65536, 0)) in fake.calls

    def test_no_exit_line_says_no_status_rather_than_a_wrong_one(self, home):
        """Without supervisord's log line the wait names no exit status (not a made-up 0)."""
        tool, fake = self.make(home, ["FATAL"])
        fake.fail["supervisor.readLog"] = SupervisorError("readLog: no log file")
        assert 1 == tool._wait_running(["mailer"], {"mailer"})
        assert "exit status" not in tool.err.getvalue()

    def test_backoff_until_the_timeout_is_reported(self, home):
        """A process stuck in BACKOFF is named when the wait times out."""
        tool, _ = self.make(home, ["BACKOFF"])
        assert 1 == tool._wait_running(["mailer"], {"mailer"})
        assert "mailer:mailer is BACKOFF" in tool.err.getvalue()
        assert "not RUNNING after 60s" in tool.err.getvalue()

    def test_stopped_is_fine_when_autostart_is_off(self, home):
        """autostart=false processes stay STOPPED; that is not a failure."""
        tool, _ = self.make(home, ["STOPPED"])
        assert 0 == tool._wait_running(["mailer"], set())


class TestListAndCheck:
    def test_list_json_without_supervisord_still_lists_the_files(self, home):
        """Unreachable supervisord: tasks listed, no processes, a warning on stderr."""
        import json

        code, out, _err = run(home, FakeSupervisor(home, down=True), "list", "--json")
        doc = json.loads(out)
        assert 0 == code
        assert [("indexer", True), ("mailer", True), ("reports", False)] == [
            (t["name"], t["enabled"]) for t in doc["tasks"]
        ]

    def test_check_passes_a_clean_layout(self, home):
        """No problem: exit 0 and a one-line summary."""
        code, out, err = run(home, FakeSupervisor(home), "check")
        assert (0, "") == (code, err)
        assert "ok: 3 task file(s)" in out

    def test_check_finds_a_program_defined_in_both_dirs(self, home):
        """A disabled file that would clash with an enabled one is reported."""
        (home / "tasks_disabled" / "other.conf").write_text(prog("mailer"))
        code, _, err = run(home, FakeSupervisor(home), "check")
        assert 1 == code
        assert (
            f"{home}/tasks_disabled/other.conf:1: [program:mailer]: 'mailer' is also defined in"
            f" the enabled {home}/tasks/mailer.conf:1; enabling this file would clash"
        ) in err

    def test_discover_lists_both_dirs(self, home):
        """Enabled tasks first, then disabled, each sorted."""
        layout = load_layout(home / "supervisord.conf")
        assert [("indexer", True), ("mailer", True), ("reports", False)] == [
            (t.name, t.enabled) for t in discover(layout)
        ]


class TestSlowStopsAndBrokenFiles:
    def tool(self, home: Path, fake: FakeSupervisor, *args: str) -> tasks.Tool:
        opts = tasks.parse_args(["-c", str(home / "supervisord.conf"), *args])
        clock = FakeClock()
        layout = load_layout(home / "supervisord.conf")
        return tasks.Tool(opts, layout, fake, io.StringIO(), io.StringIO(), clock, clock.sleep)

    def test_disable_waits_as_long_as_the_stop_takes(self, home):
        """stopwaitsecs=30: the group is stopped without waiting on one RPC, polled until
        STOPPED (here 20 s), then removed; no rollback."""
        (home / "tasks" / "mailer.conf").write_text(prog("mailer", "stopwaitsecs=30\n"))
        fake = FakeSupervisor(home, stop_polls=80)
        tool = self.tool(home, fake, "disable", "mailer")
        assert 0 == tool.cmd_toggle(enable=False)
        assert ("stop_group", ("mailer", False)) in fake.calls
        assert (home / "tasks_disabled" / "mailer.conf").is_file()
        assert {"indexer"} == fake.groups
        assert "moved back" not in tool.err.getvalue()

    def test_a_stop_longer_than_stopwaitsecs_is_still_stopping_not_rolled_back(self, home):
        """Past stopwaitsecs + margin: 'still stopping', exit 3, the file stays disabled."""
        (home / "tasks" / "mailer.conf").write_text(prog("mailer", "stopwaitsecs=2\n"))
        fake = FakeSupervisor(home, stop_polls=10_000)
        tool = self.tool(home, fake, "disable", "mailer")
        assert 3 == tool.cmd_toggle(enable=False)
        err = tool.err.getvalue()
        assert "mailer:mailer still stopping after 7s" in err
        assert "refused" not in err
        assert (home / "tasks_disabled" / "mailer.conf").is_file()
        assert [] == [c for c in fake.calls if c[0] == "update"]

    def test_a_rollback_never_overwrites_a_newer_file(self, home):
        """A conf written at the old place meanwhile is kept, and so is the moved one."""
        fake = FakeSupervisor(home, fail_update=1)
        tool = self.tool(home, fake, "disable", "mailer")
        original = fake.update

        def update(only: Any = None) -> dict[str, list[str]]:
            (home / "tasks" / "mailer.conf").write_text(prog("mailer", "numprocs=1\n"))
            return original(only)

        fake.update = update  # type: ignore[method-assign]
        assert 1 == tool.cmd_toggle(enable=False)
        assert "numprocs=1" in (home / "tasks" / "mailer.conf").read_text()
        assert (home / "tasks_disabled" / "mailer.conf").is_file()
        assert "a newer" in tool.err.getvalue()

    def test_a_broken_file_is_named_in_every_toggle_and_nothing_moves(self, home):
        """A broken tasks/ file blocks enable/disable of others with an error naming it."""
        (home / "tasks" / "indexer.conf").write_text("[program:indexer\ncommand=/bin/true\n")
        fake = FakeSupervisor(home)
        for args in (("enable", "reports"), ("disable", "mailer")):
            code, _out, err = run(home, fake, *args)
            assert 1 == code
            assert f"error: {home}/tasks/indexer.conf is broken" in err
            assert "supervisor-tasks disable indexer" in err
        assert (home / "tasks" / "mailer.conf").is_file()
        assert [] == [c for c in fake.calls if c[0] == "update"]

    def test_the_broken_file_itself_can_be_disabled(self, home):
        """Disabling the broken file is the way out, so it is allowed."""
        (home / "tasks" / "indexer.conf").write_text("[program:indexer\ncommand=/bin/true\n")
        code, _, err = run(home, FakeSupervisor(home), "disable", "indexer")
        assert (0, "") == (code, err)
        assert (home / "tasks_disabled" / "indexer.conf").is_file()

    def test_list_shows_a_broken_file_as_broken(self, home):
        """list and list --json say broken, with the problem at its line."""
        import json

        (home / "tasks" / "indexer.conf").write_text("[program:indexer\ncommand=/bin/true\n")
        _, out, _ = run(home, FakeSupervisor(home), "list")
        assert f"indexer  enabled BROKEN  {home}/tasks/indexer.conf" in out
        _, out, _ = run(home, FakeSupervisor(home), "list", "--json")
        [row] = [t for t in json.loads(out)["tasks"] if t["name"] == "indexer"]
        assert row["broken"]
        assert row["problems"][0].startswith(f"{home}/tasks/indexer.conf:1: ")

    def test_a_missing_bracket_is_one_problem_at_its_line(self, home):
        """check reports a missing ']' once, on the header's line, not once per key."""
        (home / "tasks" / "indexer.conf").write_text(
            "[program:indexer\ncommand=/bin/true\nnumprocs=1\n"
        )
        code, _, err = run(home, FakeSupervisor(home), "check")
        assert 1 == code
        lines = [ln for ln in err.splitlines() if "indexer.conf" in ln]
        assert [f"supervisor-tasks: {home}/tasks/indexer.conf:1: cannot parse section header"
                " '[program:indexer': it lacks its closing ']'"] == lines  # fmt: skip

    def test_a_section_twice_in_one_file_is_one_problem_not_three(self, home):
        """[program:indexer] twice in indexer.conf: "defined twice", not also two symmetric
        "duplicate name ... also defined in" lines for the same fault."""
        (home / "tasks" / "indexer.conf").write_text(prog("indexer") + "\n" + prog("indexer"))
        code, _, err = run(home, FakeSupervisor(home), "check")
        assert 1 == code
        lines = [ln for ln in err.splitlines() if "indexer.conf" in ln]
        assert 1 == len(lines), lines
        assert "defined twice in this file" in lines[0]

    def test_a_key_before_any_header_is_one_problem_on_one_line(self, home):
        """A file of keys without a header: our one line, not also configparser's
        three-line "File contains no section headers" for the same fault."""
        (home / "tasks" / "indexer.conf").write_text("command=/bin/true\n")
        code, _, err = run(home, FakeSupervisor(home), "check")
        assert 1 == code
        lines = [ln for ln in err.splitlines() if "indexer.conf" in ln]
        assert [f"supervisor-tasks: {home}/tasks/indexer.conf:1: key before any [section]"
                " header"] == lines  # fmt: skip
        assert "File contains no section headers" not in err


def test_rpc_and_wait_timeouts_take_the_suites_durations():
    """--rpc-timeout 200ms and --wait-timeout 2m, as in the other tools; 0 is refused."""
    from listeners import tasks

    args = tasks.build_parser().parse_args(
        ["--rpc-timeout", "200ms", "enable", "x", "--wait", "--wait-timeout", "2m"]
    )
    assert (0.2, 120.0) == (args.rpc_timeout, args.wait_timeout)
    with pytest.raises(SystemExit):
        tasks.build_parser().parse_args(["--rpc-timeout", "0", "list"])


class TestOneAtATime:
    def test_a_second_run_waits_for_the_first_instead_of_interleaving(self, home):
        """While one disable waits in supervisord's update, an enable of the same task from
        another shell says it waits, and moves nothing until the first has finished."""
        import threading

        gate, inside = threading.Event(), threading.Event()

        class Slow(FakeSupervisor):
            def update(self, only: Any = None) -> dict[str, list[str]]:
                inside.set()
                gate.wait(30)
                return super().update(only)

        first: list[tuple[int, str, str]] = []
        t = threading.Thread(
            target=lambda: first.append(run(home, Slow(home), "disable", "mailer"))
        )
        t.start()
        assert inside.wait(30)
        second: list[tuple[int, str, str]] = []
        t2 = threading.Thread(
            target=lambda: second.append(run(home, FakeSupervisor(home), "enable", "mailer"))
        )
        t2.start()
        t2.join(1.0)
        assert t2.is_alive()  # waiting on the first run's lock
        assert (home / "tasks_disabled" / "mailer.conf").is_file()  # the first run's move only
        gate.set()
        t.join(30)
        t2.join(30)
        assert first[0][0] == 0
        code, out, err = second[0]
        assert (code, err) == (0, "")
        assert "waiting for another supervisor-tasks enable/disable" in out
        assert (home / "tasks" / "mailer.conf").is_file()  # then the enable, after it


class TestRefusedChangeMessages:
    def test_a_missing_environment_variable_is_named_with_what_to_do(self, home):
        """CANT_REREAD for an unset %(ENV_x)s: one short line naming the variable, not the
        several KB of every name supervisord has, and not a pointer to a clean check."""

        class NoEnv(FakeSupervisor):
            def update(self, only: Any = None) -> dict[str, list[str]]:
                if (self.home / "tasks" / "reports.conf").exists():
                    names = ", ".join(f"'ENV_VAR{i}'" for i in range(400))
                    raise RPCFault(
                        92,
                        "CANT_REREAD: Format string '%(ENV_NOPE)s' for 'program:reports.command'"
                        f" contains names ('ENV_NOPE') which cannot be expanded. Available names:"
                        f" {names}",
                        "supervisor.reloadConfig",
                    )
                return super().update(only)

        code, _out, err = run(home, NoEnv(home), "enable", "reports")
        assert code == 1
        (line,) = [ln for ln in err.splitlines() if ln.startswith("supervisor-tasks: error:")]
        assert "files moved back" in line
        assert "%(ENV_NOPE)s and supervisord's environment has no NOPE" in line
        assert "supervisor-tasks check" not in line
        assert len(line) < 700, len(line)
        assert (home / "tasks_disabled" / "reports.conf").is_file()

    def test_a_rollback_that_left_a_file_does_not_say_files_moved_back(self, home):
        """A file changed after it was moved is left where it is, and the error says so."""

        class Refuses(FakeSupervisor):
            def update(self, only: Any = None) -> dict[str, list[str]]:
                moved = self.home / "tasks" / "reports.conf"
                if moved.exists():
                    moved.write_text(prog("reports", "numprocs=2\n"))  # someone edits it
                    raise RPCFault(92, "CANT_REREAD: broken", "supervisor.reloadConfig")
                return super().update(only)

        code, _out, err = run(home, Refuses(home), "enable", "reports")
        assert code == 1
        assert "changed since it was moved; left where it is" in err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("supervisor-tasks: error:")]
        assert "some files were left where they are" in line
        assert "files moved back" not in line


def test_a_move_refused_for_permissions_says_what_to_do(home, monkeypatch):
    """EACCES on the move (a user who may not write tasks_disabled/; as root only a fake can
    refuse): one line that names both directories and what to do, nothing moved."""

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied", str(src), None, str(dst))

    monkeypatch.setattr(toggle.os, "link", refuse)
    monkeypatch.setattr(toggle.os, "rename", refuse)
    code, _out, err = run(home, FakeSupervisor(home), "disable", "mailer")
    assert code == 1
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "Permission denied" in line
    assert "nothing was moved (run as the owner of" in line
    assert f"{home}/tasks_disabled" in line
    assert (home / "tasks" / "mailer.conf").is_file()
