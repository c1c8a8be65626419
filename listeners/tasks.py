"""supervisor-tasks: enable and disable workers by moving their conf, applied live.

The tool behind "move the conf file from tasks/ to tasks_disabled/", made safe: names are
checked (never a path), a conf is validated with supervisord's own parser before it may run,
the move is an atomic rename, and the change is applied to the running supervisord like
``supervisorctl reread`` + ``update`` limited to the groups of the moved files. If supervisord
refuses, the move is rolled back.

This is a command-line tool, never an event listener: it may print to stdout.

Exit codes: 0 done (or nothing to do), 1 the operation failed (nothing changed, or rolled
back; or ``check``/``--wait`` found problems), 2 usage error (bad flag, unknown or unsafe NAME,
no conf), 3 files moved but not applied (supervisord unreachable, or a worker still stopping).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from listeners.core.cli import HelpFormatter
from listeners.core.supervisor import Connection, Supervisor, SupervisorError
from listeners.taskfiles.check import (
    duplicate_problems,
    group_error,
    parser_for,
    validate_file,
    validate_layout,
)
from listeners.taskfiles.files import discover, resolve
from listeners.taskfiles.layout import (
    ConfError,
    Layout,
    NameRefused,
    Problem,
    Task,
    default_conf,
    load_layout,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_APPLIED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Config",
    "build_parser",
    "main",
    "parse_args",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_APPLIED = 3

_FAILED_STATES = {"FATAL", "EXITED", "UNKNOWN"}
_ACTIVE_STATES = {"RUNNING", "STARTING", "STOPPING", "BACKOFF"}
#: supervisord's default stopwaitsecs, and the time it needs beyond it to SIGKILL and reap.
_STOPWAITSECS = 10.0
_STOP_MARGIN = 5.0


class Client(Protocol):
    """What this tool needs from supervisord (listeners.core.supervisor.Supervisor has it)."""

    def state(self) -> str: ...
    def all_process_info(self) -> list[dict[str, Any]]: ...
    def update(self, only: Sequence[str] | None = None) -> dict[str, list[str]]: ...
    def stop_group(self, group: str, *, wait: bool = True) -> None: ...


@dataclass(frozen=True)
class Config:
    command: str
    conf: Path
    tasks_dir: Path | None
    disabled_dir: Path | None
    names: tuple[str, ...]
    as_json: bool
    apply: bool
    wait: bool
    wait_timeout: float
    server_url: str | None
    rpc_timeout: float


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (e.g. 30 or 2.5)"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="supervisor-tasks",
        description="List, check, enable and disable supervisord tasks (one conf file each in"
        " tasks/, disabled ones in tasks_disabled/), applied to the running supervisord.",
        epilog="exit codes: 0 ok, 1 operation failed (rolled back), 2 usage error,"
        " 3 files moved but supervisord not reachable to apply",
    )
    parser.add_argument(
        "-c",
        "--configuration",
        metavar="FILE",
        help="the supervisord conf (default: searched like supervisorctl does)",
    )
    parser.add_argument(
        "--tasks-dir",
        metavar="DIR",
        help="the enabled dir (default: the dir of the conf's [include] glob named tasks/)",
    )
    parser.add_argument(
        "--disabled-dir",
        metavar="DIR",
        help="the disabled dir (default: tasks_disabled/ beside the tasks dir)",
    )
    parser.add_argument(
        "-s",
        "--serverurl",
        metavar="URL",
        help="supervisord's address (default: from the conf's [supervisorctl] serverurl,"
        " else its [unix_http_server] file)",
    )
    parser.add_argument(
        "--rpc-timeout",
        metavar="SECONDS",
        type=_positive,
        default=60.0,
        help="timeout of each XML-RPC call; stopping a group waits for its stopwaitsecs"
        " (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lister = sub.add_parser(
        "list", formatter_class=HelpFormatter, help="every task, enabled or not, with live states"
    )
    lister.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub.add_parser(
        "check",
        formatter_class=HelpFormatter,
        help="validate every conf in both dirs (exit 1 on problems)",
    )
    for name, verb in (("enable", "move to tasks/ and add"), ("disable", "stop, remove and move")):
        cmd = sub.add_parser(name, formatter_class=HelpFormatter, help=f"{verb} the named tasks")
        cmd.add_argument("names", nargs="+", metavar="NAME", help="task (file stem) or program")
        cmd.add_argument(
            "--no-apply",
            dest="apply",
            action="store_false",
            help="only move the files; do not talk to supervisord (e.g. in an image build)",
        )
        if name == "enable":
            cmd.add_argument(
                "--wait",
                action="store_true",
                help="wait until the enabled processes are RUNNING; report those that fail",
            )
            cmd.add_argument(
                "--wait-timeout",
                metavar="SECONDS",
                type=_positive,
                default=60.0,
                help="how long --wait waits (default: %(default)s)",
            )
    return parser


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.configuration:
        conf = Path(args.configuration)
    else:
        found = default_conf()
        if found is None:
            parser.error("no supervisord conf found where supervisorctl looks; pass -c FILE")
        conf = found
    if args.serverurl:
        try:
            Connection(url=args.serverurl).check()
        except ValueError as exc:
            parser.error(str(exc))
    return Config(
        command=args.command,
        conf=conf,
        tasks_dir=Path(args.tasks_dir) if args.tasks_dir else None,
        disabled_dir=Path(args.disabled_dir) if args.disabled_dir else None,
        names=tuple(getattr(args, "names", ())),
        as_json=getattr(args, "json", False),
        apply=getattr(args, "apply", True),
        wait=getattr(args, "wait", False),
        wait_timeout=getattr(args, "wait_timeout", 60.0),
        server_url=args.serverurl,
        rpc_timeout=args.rpc_timeout,
    )


def connect(layout: Layout, opts: Config) -> Client:
    """The supervisord the conf names, with the conf's credentials."""
    url = opts.server_url or layout.url
    return Supervisor(
        Connection(
            url=url,
            username=layout.username,
            password=layout.password,
            timeout=opts.rpc_timeout,
        )
    )


class Tool:
    """One run of a command; output goes to ``out`` (results) and ``err`` (problems)."""

    def __init__(
        self,
        opts: Config,
        layout: Layout,
        client: Client,
        out: TextIO,
        err: TextIO,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.opts = opts
        self.layout = layout
        self.client = client
        self.out = out
        self.err = err
        self.clock = clock
        self.sleep = sleep
        self._written: dict[Path, tuple[int, int, int] | None] = {}  # what this run moved

    def say(self, text: str) -> None:
        self.out.write(text + "\n")  # stdout-ok: CLI output, never an event listener

    def warn(self, text: str) -> None:
        self.err.write(f"supervisor-tasks: {text}\n")

    # ------------------------------------------------------------------ list

    def live(self) -> list[dict[str, Any]] | None:
        try:
            return self.client.all_process_info()
        except SupervisorError as exc:
            self.warn(f"warning: no live states: {exc}")
            return None

    def cmd_list(self) -> int:
        tasks = discover(self.layout)
        infos = self.live()
        rows = [self._task_row(t, infos) for t in tasks]
        if self.opts.as_json:
            doc = {
                "conf": str(self.layout.conf),
                "tasks_dir": str(self.layout.tasks_dir),
                "disabled_dir": str(self.layout.disabled_dir),
                "supervisord_reachable": infos is not None,
                "tasks": rows,
            }
            self.say(json.dumps(doc, indent=2))
            return EXIT_OK
        if not rows:
            self.say(f"no tasks in {self.layout.tasks_dir} or {self.layout.disabled_dir}")
        for row in rows:
            status = "enabled" if row["enabled"] else "disabled"
            if row["broken"]:
                status += " BROKEN"
            self.say(f"{row['name']}  {status}  {row['path']}")
            for problem in row["problems"]:
                self.say(f"  broken: {problem}")
            for prog in row["programs"]:
                self.say(
                    f"  {prog['kind']} {prog['name']}  numprocs={prog['numprocs']}"
                    f"  command={prog['command']}"
                )
            for proc in row["processes"]:
                self.say(
                    f"    {proc['group']}:{proc['name']}  {proc['state']}  {proc['description']}"
                )
        return EXIT_OK

    @staticmethod
    def _task_row(task: Task, infos: list[dict[str, Any]] | None) -> dict[str, Any]:
        groups = set(task.groups)
        return {
            "name": task.name,
            "path": str(task.path),
            "enabled": task.enabled,
            "broken": task.broken,
            "problems": [str(p) for p in task.problems],
            "groups": task.groups,
            "programs": [
                {
                    "kind": p.kind,
                    "name": p.name,
                    "numprocs": _int(p.values.get("numprocs", "1")),
                    "command": p.values.get("command"),
                }
                for p in task.programs
            ],
            "processes": [
                {
                    "group": i["group"],
                    "name": i["name"],
                    "state": i["statename"],
                    "pid": i["pid"],
                    "description": i.get("description", ""),
                }
                for i in (infos or [])
                if i["group"] in groups
            ],
        }

    # ------------------------------------------------------------------ check

    def cmd_check(self) -> int:
        problems = validate_layout(self.layout)
        for problem in problems:
            self.warn(str(problem))
        count = len(discover(self.layout))
        if problems:
            self.warn(f"{len(problems)} problem(s) in {count} task file(s)")
            return EXIT_FAILED
        self.say(
            f"ok: {count} task file(s) in {self.layout.tasks_dir} and {self.layout.disabled_dir}"
        )
        return EXIT_OK

    # ------------------------------------------------------------------ enable / disable

    def cmd_toggle(self, enable: bool) -> int:
        tasks = discover(self.layout)
        try:
            chosen = resolve(self.opts.names, tasks)
        except NameRefused as exc:
            self.warn(f"error: {exc}")
            return EXIT_USAGE
        verb = "enabled" if enable else "disabled"
        to_move = [t for t in chosen if t.enabled != enable]
        for task in chosen:
            if task.enabled == enable:
                self.say(f"{task.name}: already {verb} ({task.path}); nothing to move")
        leaving = {t.path for t in to_move if not enable}
        broken = [t for t in tasks if t.enabled and t.broken and t.path not in leaving]
        if broken and self.opts.apply and to_move:
            for task in broken:
                self.warn(
                    f"error: {task.path} is broken ({task.problems[0]}); supervisord cannot"
                    f" reread its conf while it is in {self.layout.tasks_dir}: fix it, or move it"
                    f" out with `supervisor-tasks disable {task.name}`, then run again;"
                    " nothing was moved"
                )
            return EXIT_FAILED
        if enable and to_move:
            problems = self._enable_problems(tasks, to_move)
            if problems:
                for problem in problems:
                    self.warn(str(problem))
                self.warn(
                    "error: not enabled: "
                    + ", ".join(t.name for t in to_move)
                    + " (fix the conf, then run again; nothing was moved)"
                )
                return EXIT_FAILED
        try:
            moved = self._move_all(to_move, enable)
        except OSError as exc:
            self.warn(f"error: cannot move: {exc}; nothing was moved")
            return EXIT_FAILED
        for task, dest in moved:
            self.say(f"{task.name}: moved {task.path} -> {dest}")
        if not self.opts.apply:
            self.say("not applied (--no-apply): supervisord picks it up at its next reread")
            return EXIT_OK
        return self._apply(chosen, moved, enable)

    def _apply(self, chosen: list[Task], moved: list[tuple[Task, Path]], enable: bool) -> int:
        """reread + update the groups of ``chosen``; roll ``moved`` back if supervisord refuses."""
        groups = [g for t in chosen for g in t.groups]
        if not groups:
            return EXIT_OK
        try:
            self.client.state()
        except SupervisorError as exc:
            if not moved:
                self.warn(f"warning: nothing moved, and supervisord not checked: {exc}")
                return EXIT_OK
            self.warn(
                f"warning: files moved but not applied: {exc}. supervisord will pick the change"
                " up when it starts, or run `supervisorctl reread && supervisorctl update`"
            )
            return EXIT_NOT_APPLIED
        try:
            if not enable and not self._stopped(chosen, groups):
                return EXIT_NOT_APPLIED
            done = self.client.update(only=groups)
            self._verify(groups, present=enable)
        except SupervisorError as exc:
            self._rollback(moved, groups)
            hint = ""
            if "CANT_REREAD" in str(exc):
                hint = "; a conf file is broken: `supervisor-tasks check` names it, fix it"
            self.warn(f"error: supervisord refused the change, files moved back: {exc}{hint}")
            return EXIT_FAILED
        for kind in ("removed", "added", "changed"):
            if done.get(kind):
                self.say(f"supervisord: {kind} group(s) {', '.join(done[kind])}")
        if enable and self.opts.wait:
            autostart = {g for t in chosen for g in t.autostart_groups()}
            try:
                return self._wait_running(groups, autostart)
            except SupervisorError as exc:
                self.warn(f"error: applied, but could not watch the processes start: {exc}")
                return EXIT_FAILED
        return EXIT_OK

    def _stopped(self, chosen: list[Task], groups: list[str]) -> bool:
        """Stop the groups without waiting on one RPC, then wait as long as their stop takes
        (the longest stopwaitsecs, plus the kill): a stop may outlast --rpc-timeout."""
        live = {
            i["group"] for i in self.client.all_process_info() if i["statename"] in _ACTIVE_STATES
        }
        stopping = [g for g in groups if g in live]
        if not stopping:
            return True
        for group in stopping:
            self.client.stop_group(group, wait=False)
        waits = [
            _float(p.values.get("stopwaitsecs"), _STOPWAITSECS) for t in chosen for p in t.programs
        ]
        budget = max(waits, default=_STOPWAITSECS) + _STOP_MARGIN
        deadline = self.clock() + budget
        while True:
            infos = self.client.all_process_info()
            busy = [i for i in infos if i["group"] in stopping and i["statename"] in _ACTIVE_STATES]
            if not busy:
                return True
            if self.clock() >= deadline:
                self.warn(
                    f"warning: {', '.join(_name(i) for i in busy)} still stopping after"
                    f" {budget:g}s; the file stays in {self.layout.disabled_dir} and supervisord"
                    " finishes the stop; run the same disable again to remove the group"
                )
                return False
            self.sleep(0.25)

    def _enable_problems(self, tasks: list[Task], to_move: list[Task]) -> list[Problem]:
        """What is wrong with the files about to run: their own conf and clashes with others."""
        problems = []
        for task in to_move:
            problems += validate_file(self.layout, task.path)
            if (self.layout.tasks_dir / task.path.name).exists():
                problems.append(
                    Problem(task.path, f"{self.layout.tasks_dir / task.path.name} already exists")
                )
        if problems:
            return problems
        staying = [t.path for t in tasks if t.enabled]
        incoming = [t.path for t in to_move]
        active = [self.layout.conf, *self.layout.other_included_files(), *staying, *incoming]
        problems = duplicate_problems(active, candidates=incoming)
        if not problems:
            error = group_error(self.layout, parser_for(self.layout, active))
            if error is not None:
                problems.append(Problem(self.layout.conf, f"with these tasks enabled: {error}"))
        return problems

    def _move_all(self, tasks: list[Task], enable: bool) -> list[tuple[Task, Path]]:
        """Rename each file; on any failure put back the ones already moved and re-raise."""
        target = self.layout.tasks_dir if enable else self.layout.disabled_dir
        if tasks:
            target.mkdir(parents=True, exist_ok=True)
        moved: list[tuple[Task, Path]] = []
        try:
            for task in tasks:
                dest = target / task.path.name
                if dest.exists():
                    raise FileExistsError(f"{dest} already exists; refusing to overwrite it")
                _move_no_clobber(task.path, dest)
                self._written[dest] = _identity(dest)
                moved.append((task, dest))
        except OSError:
            for task, dest in reversed(moved):
                _move_no_clobber(dest, task.path)
            raise
        return moved

    def _verify(self, groups: list[str], *, present: bool) -> None:
        """Raise if supervisord's groups do not match the move (e.g. it runs another conf)."""
        live = {i["group"] for i in self.client.all_process_info()}
        wrong = [g for g in groups if (g in live) != present]
        if wrong:
            how = "still has" if not present else "did not add"
            raise SupervisorError(
                f"after reread and update supervisord {how} group(s) {', '.join(wrong)}; is it"
                f" running with {self.layout.conf}?"
            )

    def _rollback(self, moved: list[tuple[Task, Path]], groups: list[str]) -> None:
        for task, dest in reversed(moved):
            if self._written.get(dest) != _identity(dest):
                self.warn(f"warning: {dest} changed since it was moved; left where it is")
                continue
            try:
                _move_no_clobber(dest, task.path)
                self.warn(f"{task.name}: moved back {dest} -> {task.path}")
            except FileExistsError:
                self.warn(
                    f"warning: a newer {task.path} was written meanwhile; kept it, and {dest}"
                )
            except OSError as exc:
                self.warn(f"error: could not move {dest} back to {task.path}: {exc}")
        try:
            # Bring supervisord back in line with the restored files (re-add what was removed).
            self.client.update(only=groups)
        except SupervisorError as exc:
            self.warn(f"warning: could not re-sync supervisord after the rollback: {exc}")

    def _wait_running(self, groups: list[str], autostart: set[str]) -> int:
        deadline = self.clock() + self.opts.wait_timeout
        wanted = set(groups)
        while True:
            infos = [i for i in self.client.all_process_info() if i["group"] in wanted]
            pending = [
                i
                for i in infos
                if i["statename"] != "RUNNING"
                and not (i["statename"] == "STOPPED" and i["group"] not in autostart)
            ]
            failed = [i for i in pending if i["statename"] in _FAILED_STATES]
            if not pending:
                self.say(f"running: {', '.join(_name(i) for i in infos) or 'no processes'}")
                return EXIT_OK
            if failed or self.clock() >= deadline:
                for info in failed or pending:
                    self.warn(f"error: {_failure(info)}")
                if not failed:
                    self.warn(f"error: not RUNNING after {self.opts.wait_timeout:g}s")
                return EXIT_FAILED
            self.sleep(0.25)


def _name(info: dict[str, Any]) -> str:
    return f"{info['group']}:{info['name']}"


def _failure(info: dict[str, Any]) -> str:
    parts = [f"{_name(info)} is {info['statename']}"]
    if info.get("spawnerr"):
        parts.append(f"spawn error: {info['spawnerr']}")
    if info["statename"] in {"EXITED", "BACKOFF", "FATAL"} and info.get("exitstatus") is not None:
        parts.append(f"last exit status {info['exitstatus']}")
    if info.get("description"):
        parts.append(str(info["description"]))
    return "; ".join(parts)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """inode, size and mtime: a file replaced or edited since we moved it differs."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _move_no_clobber(src: Path, dst: Path) -> None:
    """Rename that never replaces an existing ``dst`` (FileExistsError instead)."""
    try:
        os.link(src, dst)  # fails with EEXIST, atomically, when dst exists
    except FileExistsError:
        raise
    except OSError:
        if dst.exists():  # no hard links on this filesystem: the check and rename race
            raise FileExistsError(f"{dst} already exists; refusing to overwrite it") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def _int(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def main(
    argv: list[str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: Client | None = None,
) -> int:
    out = sys.stdout if out is None else out  # stdout-ok: a CLI, never an event listener
    err = sys.stderr if err is None else err
    opts = parse_args(argv)
    try:
        layout = load_layout(opts.conf, opts.tasks_dir, opts.disabled_dir)
    except ConfError as exc:
        err.write(f"supervisor-tasks: error: {exc}\n")
        return EXIT_USAGE
    tool = Tool(opts, layout, client if client is not None else connect(layout, opts), out, err)
    if opts.command == "list":
        return tool.cmd_list()
    if opts.command == "check":
        return tool.cmd_check()
    return tool.cmd_toggle(enable=opts.command == "enable")


if __name__ == "__main__":
    sys.exit(main())
