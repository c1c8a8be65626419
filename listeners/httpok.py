"""supervisor-httpok: superlance httpok's command line, run by the suite's watchdog.

Same flags and meanings (-p, -a, -t, -c, -b, -s, -m, -g, -d, -e/-E, -n, the URL; a probe per
TICK event), two differences: restarts never block supervisord (core.restart), and a process
younger than ``--grace`` that has not passed a check yet is not restarted (superlance restarted
one still starting up).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NoReturn, TypeVar

from listeners.core.cli import DEFAULT_SENDMAIL, HelpFormatter
from listeners.core.supervisor import Connection, SupervisorError
from listeners.core.units import parse_count, parse_duration, parse_status
from listeners.watchdog.engine import Check, HttpokOptions, WatchdogConfig, serve, validate

__all__ = ["build_parser", "main", "parse_args"]

T = TypeVar("T")


def _httpok_usage(message: str) -> NoReturn:
    sys.stderr.write(f"supervisor-httpok: {message}\n")
    raise SystemExit(2)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (as the other tools' errors are)."""

    def error(self, message: str) -> NoReturn:
        _httpok_usage(f"{message}; usage: supervisor-httpok [-p name] [-a] [-t s] [-c code] URL")


_USAGE = (
    "supervisor-httpok [-p NAME]... [-a] [-t SECONDS] [-c CODE]... [-b TEXT] [-m ADDRESS]\n"
    "                         [-s SENDMAIL] [-g GCORE] [-d COREDIR] [-e|-E] [-n NAME]"
    " [--grace D] URL"
)


def build_parser() -> argparse.ArgumentParser:
    """superlance httpok's flags, short and long, as an argparse parser (values stay text)."""
    parser = _OneLineParser(
        prog="supervisor-httpok",
        usage=_USAGE,
        formatter_class=HelpFormatter,
        description="A drop-in for superlance's httpok: on each TICK event, GET URL and restart"
        " the RUNNING -p processes (or every process with -a) when the status is not one of -c"
        " (200) or the body lacks -b, or no answer comes within -t seconds (10). Unlike"
        " superlance, a process younger than --grace (30s) that has not passed a check yet is"
        " not restarted, and restarts"
        " never block supervisord.",
    )
    add = parser.add_argument
    add("url", nargs="*", metavar="URL", help="the URL to GET on each TICK event")
    add("-p", "--program", dest="programs", action="append", default=[], metavar="NAME",
        help="a process to restart, name or group:name (repeatable)")  # fmt: skip
    add("-a", "--any", action="store_true", help="restart every RUNNING process")
    add("-t", "--timeout", metavar="SECONDS", help="how long to wait for an answer (10)")
    add("-c", "--code", dest="codes", action="append", default=[], metavar="CODE",
        help="a status that means healthy (repeatable; default 200)")  # fmt: skip
    add("-b", "--body", metavar="TEXT", help="text the body must contain")
    add("-m", "--email", metavar="ADDRESS", help="mail ADDRESS about each restart")
    add("-s", "--sendmail_program", metavar="SENDMAIL",
        help=f"the mail command (default: {DEFAULT_SENDMAIL})")  # fmt: skip
    add("-g", "--gcore", metavar="GCORE", help="the core dump command (default: /usr/bin/gcore -o)")
    add("-d", "--coredir", metavar="COREDIR", help="write a core there before each restart")
    add("-e", "--eager", dest="eager", action="store_true", default=None,
        help="check even while no watched process runs (the default)")  # fmt: skip
    add("-E", "--not-eager", dest="eager", action="store_false",
        help="skip the check while no watched process runs")  # fmt: skip
    add("-n", "--name", metavar="NAME", help="this httpok's name in mail subjects")
    add(
        "--grace",
        metavar="DURATION",
        help="do not restart a process younger than this that has not passed a check yet (30s)",
    )
    return parser


def _convert(flag: str, value: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(value)
    except ValueError as exc:
        _httpok_usage(f"{flag} {value}: {exc}")


def parse_args(argv: Sequence[str]) -> WatchdogConfig:
    """superlance httpok's command line (the same short and long flags) to a Config."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        parser.error(f"unknown option {unknown[0]}")
    if len(args.url) != 1:
        _httpok_usage("give exactly one URL (the last argument)")
    programs: list[str] = args.programs
    statuses = [_convert("-c", c, parse_status) for c in args.codes]
    timeout = 10.0 if args.timeout is None else float(_convert("-t", args.timeout, parse_count))
    grace = 30.0 if args.grace is None else _convert("--grace", args.grace, parse_duration)
    if not programs and not args.any:
        _httpok_usage("name the processes to restart with -p NAME (repeatable) or -a (any)")
    try:
        base = Check(
            pattern="*",
            http=args.url[0],
            statuses=tuple(statuses or (200,)),
            body=args.body,
            timeout=timeout,
            failures=1,
            where="httpok",
        )
        validate(base)
    except ValueError as exc:
        _httpok_usage(str(exc))
    checks = (base,) if args.any else tuple(replace(base, pattern=p) for p in programs)
    httpok = HttpokOptions(
        email=args.email,
        sendmail=args.sendmail_program or HttpokOptions.sendmail,
        gcore=args.gcore or HttpokOptions.gcore,
        coredir=args.coredir,
        eager=args.eager is not False,
        name=args.name,
    )
    try:
        connection = Connection.from_env(None)
    except (ValueError, SupervisorError) as exc:
        _httpok_usage(f"{exc} (httpok must run as a supervisord event listener)")
    return WatchdogConfig(
        checks=checks,
        grace=grace,
        mass_guard=None,
        httpok=httpok,
        connection=connection,
        log_level=os.environ.get("LISTENERS_LOG_LEVEL", "info"),
    )


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(sys.argv[1:] if argv is None else argv), "supervisor-httpok")


if __name__ == "__main__":
    sys.exit(main())
