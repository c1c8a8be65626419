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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from listeners.core.cli import HelpFormatter, Parser, add_rpc_timeout, arg_type
from listeners.core.exits import exit_from_log
from listeners.core.names import full_name, info_name
from listeners.core.supervisor import (
    Connection,
    Supervisor,
    SupervisorError,
    SupervisorRPC,
    read_main_log,
)
from listeners.core.units import parse_positive_duration
from listeners.taskfiles.check import (
    validate_layout,
)
from listeners.taskfiles.files import discover
from listeners.taskfiles.layout import (
    ConfError,
    Layout,
    Task,
    default_conf,
    load_layout,
)
from listeners.taskfiles.toggle import (
    EXIT_FAILED,
    EXIT_NOT_APPLIED,
    EXIT_OK,
    EXIT_USAGE,
    Toggle,
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


_FAILED_STATES = {"FATAL", "EXITED", "UNKNOWN"}


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


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser by name (list, check, enable, disable), for the reference."""
    return _build()[1]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = Parser(
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
    add_rpc_timeout(
        parser,
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
                metavar="DURATION",
                type=arg_type(parse_positive_duration, "duration"),
                default=60.0,
                help="how long --wait waits (default: %(default)s)",
            )
    return parser, dict(sub.choices)


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


def connect(layout: Layout, opts: Config) -> SupervisorRPC:
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
        client: SupervisorRPC,
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
                name = full_name(proc["group"], proc["name"])
                self.say(f"    {name}  {proc['state']}  {proc['description']}")
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
        toggle = Toggle(
            self.layout,
            self.client,
            say=self.say,
            warn=self.warn,
            clock=self.clock,
            sleep=self.sleep,
        )
        outcome = toggle.run(self.opts.names, enable, apply=self.opts.apply)
        if not (outcome.applied and enable and self.opts.wait):
            return outcome.code
        autostart = {g for t in outcome.chosen for g in t.autostart_groups()}
        try:
            return self._wait_running(list(outcome.groups), autostart)
        except SupervisorError as exc:
            self.warn(f"error: applied, but could not watch the processes start: {exc}")
            return EXIT_FAILED

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
                self.say(f"running: {', '.join(info_name(i) for i in infos) or 'no processes'}")
                return EXIT_OK
            if failed or self.clock() >= deadline:
                # getProcessInfo says exit status 0 for a start that failed before startsecs;
                # supervisord's own log line "exited: NAME (exit status 7 ...)" has the truth.
                shown = failed or pending
                early = any(i["statename"] in ("BACKOFF", "FATAL") for i in shown)
                log_text = read_main_log(self.client) if early else ""
                for info in shown:
                    self.warn(f"error: {_failure(info, log_text)}")
                if not failed:
                    self.warn(f"error: not RUNNING after {self.opts.wait_timeout:g}s")
                return EXIT_FAILED
            self.sleep(0.25)


def _failure(info: dict[str, Any], log_text: str = "") -> str:
    parts = [f"{info_name(info)} is {info['statename']}"]
    if info.get("spawnerr"):
        parts.append(f"spawn error: {info['spawnerr']}")
    if info["statename"] == "EXITED" and info.get("exitstatus") is not None:
        parts.append(f"last exit status {info['exitstatus']}")
    elif info["statename"] in {"BACKOFF", "FATAL"}:
        # Never getProcessInfo's exitstatus here: it is 0 for every start that failed early.
        status, how = exit_from_log(log_text, str(info["name"]))
        if status is not None:
            parts.append(f"last exit status {status}")
        elif how:
            parts.append(f"last exit: {how}")
    if info.get("description") and info["description"] != info.get("spawnerr"):
        parts.append(str(info["description"]))
    return "; ".join(parts)


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
    client: SupervisorRPC | None = None,
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
