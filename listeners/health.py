"""supervisor-health: restart (or report) processes that are alive but not working.

Per program: HTTP, TCP and command probes, heartbeats over supervisord's capture mode or output
events, silence, and opt-in restart backoff with revival of FATAL processes. Flags give one
check for the simple case; ``--config FILE`` (INI, errors name the line) one per program. The
judging and acting is watchdog.engine's; superlance httpok's command line is listeners.httpok.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from listeners.core import cli
from listeners.core.inifile import IniError, parse_ini
from listeners.core.units import parse_count, parse_duration, parse_rate, parse_status
from listeners.watchdog.backoff import Schedule
from listeners.watchdog.engine import Check, WatchdogConfig, serve, validate

__all__ = ["build_parser", "load_file", "main", "parse_args"]

ACTIONS = ("restart", "alert")


# --------------------------------------------------------------------------- config


def _yes(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
        raise ValueError(f"invalid switch {text!r}: expected yes or no")
    return value in ("yes", "true", "on", "1")


def _action(text: str) -> str:
    if text not in ACTIONS:
        raise ValueError(f"invalid action {text!r}: expected restart or alert")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        formatter_class=cli.HelpFormatter,
        prog="supervisor-health",
        description="Restart or report supervisord processes that fail a probe, stop sending"
        " heartbeats or fall silent; hold crash-looping processes with a growing backoff.",
        epilog="DURATION: 30, 30s, 5m, 1.5h, 500ms. RATE: COUNT/WINDOW, e.g. 3/5m. Probe text"
        " may use {group}, {name} and {process_num} (e.g. http://127.0.0.1:81{process_num:02d}/)."
        " Per-program checks go in --config; see docs/health.md of the source tree or sdist.",
    )
    dur = cli.arg_type(parse_duration, "DURATION")
    w = p.add_argument_group("what to watch (flags build one check for the -p programs)")
    w.add_argument("--config", metavar="FILE", help="INI file with [program:PATTERN] checks")
    w.add_argument(
        "-p",
        "--program",
        action="append",
        default=[],
        metavar="PATTERN",
        help="group:name, group or process name (shell wildcards allowed); repeatable",
    )
    w.add_argument("--http", metavar="URL", help="GET this URL; healthy on an expected status")
    w.add_argument(
        "--status",
        action="append",
        type=cli.arg_type(parse_status, "STATUS"),
        metavar="CODE",
        help="an expected HTTP status (default 200); repeatable",
    )
    w.add_argument("--body", metavar="TEXT", help="text the HTTP body must contain")
    w.add_argument("--tcp", metavar="HOST:PORT", help="healthy when a TCP connect succeeds")
    w.add_argument("--command", metavar="CMD", help="healthy when this command exits 0")
    w.add_argument("--period", type=dur, default=10.0, help="seconds between probes (10s)")
    w.add_argument("--timeout", type=dur, default=5.0, help="deadline of one probe (5s)")
    w.add_argument(
        "--failures",
        type=cli.arg_type(parse_count, "N"),
        default=3,
        help="failed probes in a row that make a process unhealthy (3)",
    )
    w.add_argument(
        "--initial-delay",
        type=dur,
        default=0.0,
        help="no probe is judged this long after a process starts (startup phase; 0)",
    )
    w.add_argument("--heartbeat", type=dur, help="unhealthy after this long without a heartbeat")
    w.add_argument("--heartbeat-text", metavar="TEXT", help="only output with TEXT is a beat")
    w.add_argument("--silence", type=dur, help="unhealthy after this long without any output")
    w.add_argument(
        "--action",
        type=cli.arg_type(_action, "ACTION"),
        default="restart",
        help="restart or alert (report only); default restart",
    )
    b = p.add_argument_group("backoff (opt-in)")
    b.add_argument("--backoff", action="store_true", help="hold crash-looping -p processes")
    b.add_argument("--backoff-base", type=dur, default=10.0, help="first delay (10s)")
    b.add_argument("--backoff-cap", type=dur, default=300.0, help="longest delay (5m)")
    b.add_argument(
        "--backoff-reset", type=dur, default=600.0, help="a run this long resets the delay (10m)"
    )
    b.add_argument(
        "--revive-fatal", action="store_true", help="start FATAL -p processes after the backoff"
    )
    s = p.add_argument_group("safety")
    s.add_argument(
        "--grace",
        type=dur,
        default=30.0,
        help="do not restart a process younger than this that has not passed a check yet (30s)",
    )
    s.add_argument(
        "--max-restarts",
        type=cli.arg_type(parse_rate, "RATE"),
        metavar="RATE",
        help="restarts of one process per window, then report only",
    )
    s.add_argument(
        "--mass-guard",
        default="5/1m",
        metavar="RATE|off",
        help="restarts of all processes per window before health stops restarting (5/1m)",
    )
    s.add_argument("--state-dir", metavar="DIR", help="where backoff state is kept")
    cli.add_connection_args(p)
    cli.add_logging_args(p)
    return p


_FILE_KEYS = {
    "http",
    "status",
    "body",
    "tcp",
    "command",
    "period",
    "timeout",
    "failures",
    "initial-delay",
    "heartbeat",
    "heartbeat-text",
    "silence",
    "action",
    "backoff",
    "backoff-base",
    "backoff-cap",
    "backoff-reset",
    "revive-fatal",
}
_GLOBAL_KEYS = {"grace", "max-restarts", "mass-guard"}


def _guard_value(text: str) -> tuple[int, float] | None:
    return None if text.strip().lower() == "off" else parse_rate(text)


#: How each [health] setting is read; load_file checks them so an error names its line.
_GLOBAL_PARSERS: dict[str, Callable[[str], object]] = {
    "grace": parse_duration,
    "max-restarts": parse_rate,
    "mass-guard": _guard_value,
}


def _check_from(values: dict[str, str], pattern: str, where: str, base: Check) -> Check:
    """A check from key/value text; raises ValueError naming the key."""
    conv: dict[str, Callable[[str], Any]] = {
        "period": parse_duration,
        "timeout": parse_duration,
        "initial-delay": parse_duration,
        "heartbeat": parse_duration,
        "silence": parse_duration,
        "failures": parse_count,
        "action": _action,
        "command": lambda v: tuple(shlex.split(v)),
        "status": lambda v: tuple(parse_status(x.strip()) for x in v.split(",")),
        "backoff": _yes,
        "revive-fatal": _yes,
        "backoff-base": parse_duration,
        "backoff-cap": parse_duration,
        "backoff-reset": parse_duration,
    }
    out: dict[str, Any] = {}
    for key, text in values.items():
        try:
            out[key] = conv.get(key, str)(text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    sched = None
    tuning = [k for k in ("backoff-base", "backoff-cap", "backoff-reset") if k in values]
    if tuning and not (out.get("backoff") or out.get("revive-fatal")):
        raise ValueError(
            f"{tuning[0]}: set, but neither backoff nor revive-fatal is on, so it would do"
            " nothing; add backoff = yes (or drop it)"
        )
    if out.get("backoff") or out.get("revive-fatal"):
        try:
            sched = Schedule(
                out.get("backoff-base", 10.0),
                out.get("backoff-cap", 300.0),
                out.get("backoff-reset", 600.0),
            )
        except ValueError as exc:
            raise ValueError(f"backoff: {exc}") from None
    check = replace(
        base,
        pattern=pattern,
        where=where,
        http=out.get("http", base.http),
        statuses=out.get("status", base.statuses),
        body=out.get("body", base.body),
        tcp=out.get("tcp", base.tcp),
        command=out.get("command", base.command),
        period=out.get("period", base.period),
        timeout=out.get("timeout", base.timeout),
        failures=out.get("failures", base.failures),
        initial_delay=out.get("initial-delay", base.initial_delay),
        heartbeat=out.get("heartbeat", base.heartbeat),
        heartbeat_text=out.get("heartbeat-text", base.heartbeat_text),
        silence=out.get("silence", base.silence),
        action=out.get("action", base.action),
        backoff=sched,
        hold_crashes=bool(out.get("backoff", False)),
        revive_fatal=bool(out.get("revive-fatal", False)),
    )
    validate(check)
    return check


def load_file(path: str, base: Check) -> tuple[list[Check], dict[str, str]]:
    """Checks and [health] settings from an INI file; raises ValueError with file:line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read --config {path}: {exc.strerror}") from None
    checks: list[Check] = []
    settings: dict[str, str] = {}
    for section in parse_ini(text, path):
        kind, _, pattern = section.name.partition(":")
        if section.name == "health":
            for key, value in section.values.items():
                if key not in _GLOBAL_KEYS:
                    raise ValueError(
                        f"{path}:{section.where(key)}: unknown key {key!r} in [health]"
                        f" (known: {', '.join(sorted(_GLOBAL_KEYS))})"
                    )
                try:
                    _GLOBAL_PARSERS[key](value)
                except ValueError as exc:
                    raise ValueError(
                        f"{path}:{section.where(key)}: [health] {key}: {exc}"
                    ) from None
                settings[key] = value
            continue
        if kind != "program" or not pattern.strip():
            raise ValueError(
                f"{path}:{section.line}: unknown section [{section.name}]:"
                " expected [program:PATTERN] or [health]"
            )
        for key in section.values:
            if key not in _FILE_KEYS:
                raise ValueError(
                    f"{path}:{section.where(key)}: unknown key {key!r} in [{section.name}]"
                    f" (known: {', '.join(sorted(_FILE_KEYS))})"
                )
        try:
            checks.append(
                _check_from(section.values, pattern.strip(), f"{path}:{section.line}", base)
            )
        except ValueError as exc:
            key = str(exc).partition(":")[0]
            raise ValueError(f"{path}:{section.where(key)}: [{section.name}] {exc}") from None
    return checks, settings


def parse_args(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> WatchdogConfig:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    base = Check(
        pattern="*",
        period=args.period,
        timeout=args.timeout,
        failures=args.failures,
        initial_delay=args.initial_delay,
        action=args.action,
    )
    checks: list[Check] = []
    settings: dict[str, str] = {}
    flag_values = {
        k: v
        for k, v in {
            "http": args.http,
            "body": args.body,
            "tcp": args.tcp,
            "command": args.command,
            "heartbeat-text": args.heartbeat_text,
        }.items()
        if v is not None
    }
    try:
        if args.config:
            checks, settings = load_file(args.config, base)
        tuned = [
            f"--backoff-{n}"
            for n, given, default in (
                ("base", args.backoff_base, 10.0),
                ("cap", args.backoff_cap, 300.0),
                ("reset", args.backoff_reset, 600.0),
            )
            if given != default
        ]
        if tuned and not (args.backoff or args.revive_fatal):
            parser.error(f"{tuned[0]} does nothing without --backoff or --revive-fatal")
        for flag, value in (("--heartbeat", args.heartbeat), ("--silence", args.silence)):
            if value is not None and value <= 0:
                parser.error(
                    f"invalid {flag} {value:g}s: must be greater than zero (a worker would be"
                    " judged hung every round)"
                )
        flag_check = flag_values or args.heartbeat or args.silence or args.backoff
        if flag_check or args.revive_fatal:
            if not args.program:
                parser.error("probe, heartbeat and backoff flags need -p PATTERN (or '-p *')")
            extra = dict(flag_values)
            extra["backoff"] = "yes" if args.backoff else "no"
            extra["revive-fatal"] = "yes" if args.revive_fatal else "no"
            flag_base = replace(
                base,
                statuses=tuple(args.status or (200,)),
                heartbeat=args.heartbeat,
                silence=args.silence,
                backoff=None,
            )
            for pattern in args.program:
                c = _check_from(extra, pattern, "flags", flag_base)
                if c.backoff:
                    c = replace(
                        c,
                        backoff=Schedule(args.backoff_base, args.backoff_cap, args.backoff_reset),
                    )
                checks.append(c)
        grace = parse_duration(settings.get("grace", "")) if "grace" in settings else args.grace
        max_text = settings.get("max-restarts")
        max_restarts = parse_rate(max_text) if max_text else args.max_restarts
        guard = _guard_value(settings.get("mass-guard", args.mass_guard))
    except (ValueError, IniError) as exc:
        parser.error(str(exc))
    if not checks:
        parser.error("nothing to watch: give --config FILE or -p PATTERN with a probe flag")
    return WatchdogConfig(
        checks=tuple(checks),
        grace=grace,
        max_restarts=max_restarts,
        mass_guard=guard,
        state_dir=args.state_dir or cli.default_state_dir(),
        log_level=args.log_level,
        connection=cli.connection_from_args(parser, args),
    )


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(argv), "supervisor-health")


if __name__ == "__main__":
    sys.exit(main())
