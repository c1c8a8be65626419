"""supervisor-httpok: superlance httpok's command line, run by the suite's watchdog.

Same flags and meanings (-p, -a, -t, -c, -b, -s, -m, -g, -d, -e/-E, -n, the URL; a probe per
TICK event), two differences: restarts never block supervisord (core.restart), and a process
younger than ``--grace`` is never restarted (superlance restarted one still starting up).
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from listeners.core.supervisor import Connection, SupervisorError
from listeners.core.units import parse_count, parse_duration, parse_status
from listeners.core.watchdog import Check, HttpokOptions, WatchdogConfig, serve, validate

__all__ = ["HTTPOK_USAGE", "main", "parse_args"]


def _httpok_usage(message: str) -> NoReturn:
    sys.stderr.write(f"supervisor-httpok: {message}\n")
    raise SystemExit(2)


_KEYS = {"b": "body", "s": "sendmail_program", "m": "email", "g": "gcore", "d": "coredir"}
_KEYS |= {"n": "name", "p": "program", "a": "any", "t": "timeout", "c": "code", "e": "eager"}


def _options(opts: list[tuple[str, str]]) -> dict[str, Any]:
    values: dict[str, Any] = {"programs": [], "statuses": []}
    for opt, value in opts:
        name = opt.lstrip("-")
        name = _KEYS.get(name, name)
        try:
            if name == "program":
                values["programs"].append(value)
            elif name == "code":
                values["statuses"].append(parse_status(value))
            elif name == "timeout":
                values["timeout"] = float(parse_count(value))
            elif name in ("eager", "E", "not-eager"):
                values["eager"] = name == "eager"
            elif name == "grace":
                values["grace"] = parse_duration(value)
            else:
                values[name] = value or True
        except ValueError as exc:
            _httpok_usage(f"{opt} {value}: {exc}")
    return values


def parse_args(argv: Sequence[str]) -> WatchdogConfig:
    """superlance httpok's command line (getopt, the same short and long flags) to a Config."""
    longs = [
        "help",
        "program=",
        "any",
        "timeout=",
        "code=",
        "body=",
        "sendmail_program=",
        "email=",
        "gcore=",
        "coredir=",
        "eager",
        "not-eager",
        "name=",
        "grace=",
    ]
    try:
        opts, args = getopt.getopt(list(argv), "hp:at:c:b:s:m:g:d:eEn:", longs)
    except getopt.GetoptError as exc:
        _httpok_usage(f"{exc}; usage: supervisor-httpok [-p name] [-a] [-t s] [-c code] URL")
    if any(o in ("-h", "--help") for o, _ in opts):
        sys.stderr.write(HTTPOK_USAGE)
        raise SystemExit(0)
    if len(args) != 1:
        _httpok_usage("give exactly one URL (the last argument)")
    values = _options(opts)
    programs: list[str] = values["programs"]
    statuses: list[int] = values["statuses"]
    any_ = bool(values.get("any"))
    grace = float(values.get("grace", 30.0))
    if not programs and not any_:
        _httpok_usage("name the processes to restart with -p NAME (repeatable) or -a (any)")
    try:
        base = Check(
            pattern="*",
            http=args[0],
            statuses=tuple(statuses or (200,)),
            body=values.get("body"),
            timeout=values.get("timeout", 10.0),
            failures=1,
            where="httpok",
        )
        validate(base)
    except ValueError as exc:
        _httpok_usage(str(exc))
    checks = (base,) if any_ else tuple(replace(base, pattern=p) for p in programs)
    httpok = HttpokOptions(
        email=values.get("email"),
        sendmail=values.get("sendmail_program", HttpokOptions.sendmail),
        gcore=values.get("gcore", HttpokOptions.gcore),
        coredir=values.get("coredir"),
        eager=values.get("eager", True),
        name=values.get("name"),
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


HTTPOK_USAGE = """\
usage: supervisor-httpok [-p NAME]... [-a] [-t SECONDS] [-c CODE]... [-b TEXT] [-m ADDRESS]
                         [-s SENDMAIL] [-g GCORE] [-d COREDIR] [-e|-E] [-n NAME] [--grace D] URL

A drop-in for superlance's httpok: on each TICK event, GET URL and restart the RUNNING -p
processes (or every process with -a) when the status is not one of -c (200) or the body lacks
-b, or no answer comes within -t seconds (10). -m mails ADDRESS through -s; -d writes a core
with -g before each restart; -E skips the check while no watched process runs; -n names this
httpok in mail subjects. Unlike superlance, a process younger than --grace (30s) is never
restarted, and restarts never block supervisord.
"""


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(sys.argv[1:] if argv is None else argv), "supervisor-httpok")


if __name__ == "__main__":
    sys.exit(main())
