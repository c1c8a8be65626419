"""supervisor-memmon: restart processes that use more memory than their ceiling.

A drop-in for superlance's memmon (same flags, same meaning) that learns pids from
PROCESS_STATE events instead of polling supervisord, reads /proc instead of forking ``ps``,
restarts without blocking the event loop, and announces its limits and restarts on
supervisord's bus (REMOTE_COMMUNICATION ``listeners.memmon``).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from listeners.core import bus, cli, protocol
from listeners.core.background import Submitter, Worker
from listeners.core.log import configure, get_logger
from listeners.core.memory import MEASURES, Meter, Reading, read_cmdline
from listeners.core.restart import Restarter
from listeners.core.state import ProcessTable
from listeners.core.supervisor import Connection, Supervisor, SupervisorError, self_name
from listeners.core.units import format_size, parse_duration, parse_rate, parse_size
from listeners.core.wake import raise_fd_limit

__all__ = ["Config", "Memmon", "Rule", "build_parser", "main", "parse_args", "resolve_rule"]

log = get_logger("listeners.memmon")

#: Command lines of this suite's listeners (and superlance's), skipped by -g/-a by default:
#: a Python listener needs 20-30 MB and would be restarted forever under a 16 MB ceiling.
LISTENER_CMDLINE = re.compile(
    r"(?:listeners[./](?:memmon|crashmail|exporter|tasks|health|httpok)\b"
    r"|supervisor-(?:memmon|crashmail|exporter|tasks|health|httpok)\b"
    r"|superlance[./]\w+|\b(?:memmon|crashmail|crashmailbatch|fatalmailbatch|httpok)(?:\.py)?\s)"
)
RECONCILE_EVERY = 60.0
#: Even with every PROCESS_STATE event seen, reconcile this often, in case one went astray.
RECONCILE_SAFETY = 3600.0
#: How long a restart without PROCESS_STATE events waits for the process to stop.
COMPAT_STOP_TIMEOUT = 600.0
NAMESIZE_FORM = "NAME=SIZE, e.g. worker=16MB or web:web_0=200MB"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Rule:
    """One limit: ``kind`` is program, group or any (most specific first)."""

    kind: str
    pattern: str
    limit: int

    @property
    def label(self) -> str:
        flag = {"program": "-p", "group": "-g", "any": "-a"}[self.kind]
        target = "" if self.kind == "any" else f"{self.pattern}="
        return f"{flag} {target}{format_size(self.limit)}"


@dataclass(frozen=True)
class Config:
    """Everything the flags say, parsed once."""

    programs: tuple[Rule, ...] = ()
    groups: tuple[Rule, ...] = ()
    any: Rule | None = None
    cumulative: bool = False
    uptime: float | None = None
    name: str | None = None
    email: tuple[str, ...] = ()
    sendmail_program: str = cli.DEFAULT_SENDMAIL
    alert_file: str | None = None
    measure: str = "rss"
    interval: float | None = None
    grace: float = 0.0
    samples: int = 1
    max_restarts: tuple[int, float] | None = None
    dry_run: bool = False
    exclude: tuple[str, ...] = ()
    skip_listeners: bool = True
    connection: Connection = field(default_factory=Connection)
    log_level: str = "info"


def _namesize(text: str) -> tuple[str, int]:
    name, sep, size = text.rpartition("=")
    if not sep or not name.strip():
        raise ValueError(f"invalid value {text!r}: expected {NAMESIZE_FORM}")
    try:
        return name.strip(), parse_size(size)
    except ValueError as exc:
        raise ValueError(f"invalid value {text!r}: {exc}") from None


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"invalid count {text!r}: expected a whole number of 1 or more")
    return int(text)


def _interval(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"invalid interval {text!r}: must be greater than zero, e.g. 0.5 or 5s")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        prog="supervisor-memmon",
        description="Restart supervisord processes whose memory exceeds a limit"
        " (a drop-in for superlance memmon).",
        epilog="SIZE: 16MB, 16M, 16MiB, 1.5GB, 512KB or bytes (KB/MB/GB are powers of 1024,"
        " as in superlance). DURATION: 30, 30s, 5m, 1.5h, 1d.",
    )
    rules = p.add_argument_group("limits (the most specific rule applies: -p, then -g, then -a)")
    rules.add_argument(
        "-p",
        "--program",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        type=cli.arg_type(_namesize, "NAME=SIZE"),
        help="limit of a process: group:name, a process name, or a program name (all its"
        " processes); repeatable",
    )
    rules.add_argument(
        "-g",
        "--group",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        type=cli.arg_type(_namesize, "NAME=SIZE"),
        help="limit of every process in a group; repeatable",
    )
    rules.add_argument(
        "-a", "--any", metavar="SIZE", type=cli.arg_type(parse_size), help="limit of any process"
    )
    rules.add_argument(
        "-c",
        "--cumulative",
        action="store_true",
        help="count each process with all its descendants",
    )
    rules.add_argument(
        "--measure",
        choices=MEASURES,
        default="rss",
        help="rss (default, as superlance), pss (shared pages split between sharers) or uss"
        " (private pages only)",
    )
    rules.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="never judge this group or group:name by -g/-a (globs allowed); repeatable",
    )
    rules.add_argument(
        "--no-skip-listeners",
        dest="skip_listeners",
        action="store_false",
        help="also judge this suite's listeners (and superlance's) by -g/-a; by default they"
        " are recognised by their command line and skipped",
    )
    when = p.add_argument_group("when to check and act")
    when.add_argument(
        "--interval",
        metavar="SECONDS",
        type=cli.arg_type(_interval),
        help="also check every SECONDS (fractions allowed) besides every TICK event",
    )
    when.add_argument(
        "--grace",
        metavar="DURATION",
        type=cli.arg_type(parse_duration),
        default=0.0,
        help="leave a process alone this long after it started (default 0)",
    )
    when.add_argument(
        "--samples",
        metavar="N",
        type=cli.arg_type(_positive_int, "count"),
        default=1,
        help="restart after N consecutive checks over the limit (default 1)",
    )
    when.add_argument(
        "--max-restarts",
        metavar="N/WINDOW",
        type=cli.arg_type(parse_rate),
        help="after N restarts of a process within WINDOW (e.g. 3/10m), stop restarting it and"
        " alert instead",
    )
    when.add_argument(
        "--dry-run", action="store_true", help="report what would be restarted, restart nothing"
    )
    tell = p.add_argument_group("notices (superlance compatible)")
    tell.add_argument(
        "-m",
        "--email",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="mail a notice of each restart to ADDRESS; repeatable",
    )
    tell.add_argument(
        "-s",
        "--sendmail_program",
        "--sendmail-program",
        dest="sendmail_program",
        metavar="COMMAND",
        default=cli.DEFAULT_SENDMAIL,
        help="sendmail-compatible command reading the mail on stdin (default: %(default)s)",
    )
    tell.add_argument(
        "-u",
        "--uptime",
        metavar="DURATION",
        type=cli.arg_type(parse_duration),
        help="only mail when the process was up for at most DURATION (restarts of long-running"
        " processes are still done, silently)",
    )
    tell.add_argument("-n", "--name", metavar="NAME", help="name of this memmon in notice subjects")
    tell.add_argument(
        "--alert-file",
        "--file",
        dest="alert_file",
        metavar="PATH",
        help="append each notice as one JSON line to PATH",
    )
    cli.add_connection_args(p)
    cli.add_logging_args(p)
    return p


def _join_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Let ``-a -5MB`` reach the size parser (argparse would take -5MB for a flag)."""
    takes_value = {
        s for a in parser._actions if a.nargs is None and a.option_strings for s in a.option_strings
    } - {s for a in parser._actions if a.nargs == 0 for s in a.option_strings}
    known = {s for a in parser._actions for s in a.option_strings}
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if (
            token in takes_value
            and nxt is not None
            and nxt.startswith("-")
            and nxt.split("=")[0] not in known
        ):
            out.append(f"{token}={nxt}" if token.startswith("--") else token + nxt)
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def parse_args(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Flags -> Config; a bad flag exits 2 through ``parser.error`` naming the value."""
    parser = parser or build_parser()
    args = parser.parse_args(_join_dash_values(parser, sys.argv[1:] if argv is None else argv))
    if not (args.program or args.group or args.any is not None):
        parser.error("no limit given: use -p NAME=SIZE, -g NAME=SIZE or -a SIZE")
    if args.alert_file is not None and not args.alert_file.strip():
        parser.error("invalid --alert-file '': expected a file path")
    programs = {n: Rule("program", n, s) for n, s in args.program}
    groups = {n: Rule("group", n, s) for n, s in args.group}
    email = tuple(a.strip() for v in args.email for a in v.split(",") if a.strip())
    if args.email and not email:
        parser.error(f"invalid -m {args.email[0]!r}: expected an email address")
    connection = cli.connection_from_args(parser, args, env)
    return Config(
        programs=tuple(programs.values()),
        groups=tuple(groups.values()),
        any=None if args.any is None else Rule("any", "*", args.any),
        cumulative=args.cumulative,
        uptime=args.uptime,
        name=args.name,
        email=email,
        sendmail_program=args.sendmail_program,
        alert_file=args.alert_file,
        measure=args.measure,
        interval=args.interval,
        grace=args.grace,
        samples=args.samples,
        max_restarts=args.max_restarts,
        dry_run=args.dry_run,
        exclude=tuple(args.exclude),
        skip_listeners=args.skip_listeners,
        connection=connection,
        log_level=args.log_level,
    )


def program_matches(pattern: str, group: str, name: str) -> int:
    """How well a -p NAME fits a process: 3 group:name, 2 process name, 1 program, 0 not."""
    if pattern == f"{group}:{name}":
        return 3
    if pattern == name:
        return 2
    if pattern == group:
        return 1
    return 0


def excluded_by(patterns: Iterable[str], group: str, name: str) -> str | None:
    """The --exclude pattern that covers ``group:name``, if any."""
    full = f"{group}:{name}"
    for pattern in patterns:
        if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(group, pattern):
            return pattern
    return None


def resolve_rule(config: Config, group: str, name: str, *, skipped: bool = False) -> Rule | None:
    """The one rule that judges ``group:name``: program > group > any.

    ``skipped`` (excluded, or one of the suite's listeners) leaves only an explicit -p.
    """
    best: tuple[int, Rule] | None = None
    for rule in config.programs:
        score = program_matches(rule.pattern, group, name)
        if score and (best is None or score > best[0]):
            best = (score, rule)
    if best is not None:
        return best[1]
    if skipped:
        return None
    for rule in config.groups:
        if rule.pattern == group:
            return rule
    return config.any


def unknown_programs(config: Config, infos: Iterable[Mapping[str, Any]]) -> list[str]:
    """-p names that match no process supervisord knows."""
    pairs = [(str(i["group"]), str(i["name"])) for i in infos]
    return [
        r.pattern
        for r in config.programs
        if not any(program_matches(r.pattern, g, n) for g, n in pairs)
    ]


# --------------------------------------------------------------------------- the listener


@dataclass
class _Watch:
    """What memmon remembers of one process between checks."""

    over: int = 0
    restarts: deque[float] = field(default_factory=deque)
    exhausted: bool = False
    last_pid: int | None = None


class Memmon(protocol.Handler):
    """The listener: feed it events, it checks on ticks and timers and restarts offenders."""

    def __init__(
        self,
        config: Config,
        client: Supervisor,
        *,
        meter: Meter | None = None,
        rpc: Submitter | None = None,
        checker: Submitter | None = None,
        notifier: Submitter | None = None,
        restarter: Restarter | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        host: str | None = None,
        self_key: str | None = None,
        own_pid: int | None = None,
        cmdline: Callable[[int], str | None] = read_cmdline,
    ) -> None:
        self.config = config
        self.client = client
        self.meter = meter or Meter(config.measure, cumulative=config.cumulative)
        self.rpc = rpc if rpc is not None else Worker("memmon-rpc")
        self.checker = checker if checker is not None else Worker("memmon-check")
        self._notifier = notifier
        self.restarter = restarter or Restarter(client, self.rpc, clock=clock)
        self.clock = clock
        self.wall = wall
        self.host = host or cli.hostname()
        self.self_key = self_key
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.cmdline = cmdline
        self.timer_interval = config.interval
        self.table = ProcessTable(clock=wall, ignore=[self_key] if self_key else [])
        self.watches: dict[str, _Watch] = {}
        self.listeners: dict[str, str] = {}  # group:name -> why it is skipped
        self._classified: dict[str, int] = {}  # group:name -> pid whose cmdline was read
        self._lock = threading.RLock()
        self._check_queued = False
        self._compat_pending: set[str] = set()
        self._seen_state_events = False
        self._dirty = False
        self._last_reconcile = clock()
        self._published: dict[str, int] | None = None
        self.checks = 0

    # ------------------------------------------------------------------ start

    def start(self, infos: list[dict[str, Any]]) -> None:
        """Take the start-up getAllProcessInfo; log the scope; announce the limits."""
        with self._lock:
            self.table.reconcile(infos)
            self._last_reconcile = self.clock()
            for record in self.table:
                if record.pid:
                    self._classify(record.full_name, record.pid)
        limits = self._limits()
        log.info(
            "memmon.started",
            rules=[r.label for r in self._rules()],
            measure=self.config.measure,
            cumulative=self.config.cumulative,
            interval=self.config.interval,
            processes=len(self.table),
            judged=len(limits),
            skipped_listeners=sorted(self.listeners),
            excluded=self.config.exclude,
            dry_run=self.config.dry_run,
        )
        for group in self.config.groups:
            if not any(r.group == group.pattern for r in self.table):
                log.warning("memmon.unknown_group", group=group.pattern, rule=group.label)
        self._publish_limits(limits)

    def _rules(self) -> list[Rule]:
        return [*self.config.programs, *self.config.groups, *filter(None, [self.config.any])]

    # ------------------------------------------------------------------ events

    def handle(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.ProcessStateEvent):
            with self._lock:
                self._seen_state_events = True
                record = self.table.apply(event)
                key = event.full_name
                watch = self.watches.get(key)
                if record is not None and watch is not None and event.state == "STARTING":
                    watch.over = 0
                    if watch.exhausted:
                        # memmon no longer restarts it, so somebody else did: judge it again.
                        watch.exhausted = False
                        watch.restarts.clear()
            self.restarter.observe(event)
        elif isinstance(event, protocol.ProcessGroupEvent):
            with self._lock:
                self.table.apply_group(event)
                if event.added:
                    self._dirty = True
        elif isinstance(event, protocol.TickEvent):
            self.schedule_check()

    def on_timer(self) -> None:
        self.schedule_check()

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        with self._lock:
            self._dirty = True

    def close(self) -> None:
        for worker in (self.checker, self.rpc, self._notifier):
            if isinstance(worker, Worker):
                worker.join(5.0)
                worker.close(1.0)
        self.meter.close()

    # ------------------------------------------------------------------ checks

    def schedule_check(self) -> None:
        """Queue one check on the checker thread; a check already queued covers this one."""
        with self._lock:
            if self._check_queued:
                return
            self._check_queued = True
        self.checker.submit(self._run_check)

    def _run_check(self) -> None:
        with self._lock:
            self._check_queued = False
        self.check()

    def _reconcile_due(self) -> bool:
        since = self.clock() - self._last_reconcile
        needed = self._dirty or not self._seen_state_events
        return (needed and since >= RECONCILE_EVERY) or since >= RECONCILE_SAFETY

    def check(self) -> None:
        """One pass: measure every judged pid, decide, act. Runs on the checker thread."""
        self.restarter.check()
        if self._reconcile_due():
            self._reconcile()
        pending = self.restarter.pending() | self._compat_pending
        with self._lock:
            targets: dict[str, int] = {}
            rules: dict[str, Rule] = {}
            for record in self.table:
                key = record.full_name
                if not record.pid or record.pid == self.own_pid or key == self.self_key:
                    continue
                self._classify(key, record.pid)
                rule = self._rule_for(record.group, record.name)
                if rule is None or key in pending:
                    continue
                targets[key] = record.pid
                rules[key] = rule
        readings = self.meter.measure(targets)
        self.checks += 1
        for key, reading in readings.items():
            if not isinstance(reading, Reading):
                log.info(
                    "memmon.skipped",
                    process=key,
                    pid=targets[key],
                    reason=reading.reason,
                    detail=reading.detail,
                )
                continue
            self._judge(key, targets[key], reading, rules[key])
        self._publish_limits(self._limits())

    def _reconcile(self) -> None:
        try:
            infos = self.client.all_process_info()
        except SupervisorError as exc:
            log.warning("memmon.reconcile_failed", error=str(exc))
            self._last_reconcile = self.clock()
            return
        with self._lock:
            self.table.reconcile(infos)
            self._last_reconcile = self.clock()
            self._dirty = False
        log.info("memmon.reconciled", processes=len(infos))

    def _classify(self, key: str, pid: int) -> None:
        """Recognise the suite's listeners by their command line, once per pid."""
        if self._classified.get(key) == pid:
            return
        self._classified[key] = pid
        if not self.config.skip_listeners or key in self.listeners:
            return
        command = self.cmdline(pid)
        if command and LISTENER_CMDLINE.search(command + " "):
            self.listeners[key] = command[:200]
            log.info("memmon.listener_skipped", process=key, pid=pid, command=command[:200])

    def _rule_for(self, group: str, name: str) -> Rule | None:
        key = f"{group}:{name}"
        skipped = key in self.listeners or excluded_by(self.config.exclude, group, name)
        return resolve_rule(self.config, group, name, skipped=bool(skipped))

    def _limits(self) -> dict[str, int]:
        with self._lock:
            limits = {}
            for record in self.table:
                if record.full_name == self.self_key:
                    continue
                rule = self._rule_for(record.group, record.name)
                if rule is not None:
                    limits[record.full_name] = rule.limit
            return limits

    def _decide(self, key: str, pid: int, reading: Reading, rule: Rule) -> str:
        watch = self.watches.setdefault(key, _Watch())
        if watch.last_pid != pid:
            watch.last_pid = pid
            watch.over = 0
        if reading.bytes <= rule.limit:
            watch.over = 0
            return "ok"
        watch.over += 1
        record = self.table.get(key)
        started = record.start_time if record is not None else None
        if self.config.grace and started and self.wall() - started < self.config.grace:
            return "grace"
        if watch.over < self.config.samples:
            return "sampling"
        if watch.exhausted:
            return "exhausted"
        if self.config.dry_run:
            return "dry_run" if watch.over == self.config.samples else "dry_run_reported"
        if self.config.max_restarts is not None:
            count, window = self.config.max_restarts
            now = self.clock()
            while watch.restarts and now - watch.restarts[0] > window:
                watch.restarts.popleft()
            if len(watch.restarts) >= count:
                watch.exhausted = True
                return "restarts_exhausted"
        watch.restarts.append(self.clock())
        watch.over = 0
        return "restart"

    def _judge(self, key: str, pid: int, reading: Reading, rule: Rule) -> None:
        with self._lock:
            action = self._decide(key, pid, reading, rule)
            watch = self.watches[key]
            record = self.table.get(key)
            started = record.start_time if record is not None else None
        fields = {
            "process": key,
            "pid": pid,
            "measured": reading.bytes,
            "limit": rule.limit,
            "rule": rule.label,
            "action": action,
            "measure": self.config.measure,
        }
        if self.config.cumulative:
            fields["processes"] = reading.processes
        if action == "ok" or action.endswith("_reported") or action == "exhausted":
            log.debug("memmon.decision", **fields)
            return
        if action in ("sampling", "grace"):
            log.info("memmon.decision", over=watch.over, samples=self.config.samples, **fields)
            return
        log.warning("memmon.decision", **fields)
        group, _, name = key.partition(":")
        if action == "restarts_exhausted":
            count, window = self.config.max_restarts or (0, 0.0)
            message: bus.Message = bus.RestartsExhausted(
                host=self.host,
                group=group,
                name=name,
                restarts=count,
                window_seconds=window,
                measured_bytes=reading.bytes,
                limit_bytes=rule.limit,
            )
            self.rpc.submit(self._publish, message)
            self._notify("restarts_exhausted", group, name, reading, rule, None)
            return
        if action == "restart":
            if self._seen_state_events:
                if not self.restarter.restart(key):
                    return
            else:
                # No PROCESS_STATE event seen (a superlance conf with events=TICK_60, or a
                # check before the first event): no STOPPED event may come, so stop with wait
                # and start, on a thread of its own so a slow stop holds up nothing else.
                with self._lock:
                    if key in self._compat_pending:
                        return
                    self._compat_pending.add(key)
                threading.Thread(
                    target=self._restart_polling, args=(key,), name="memmon-restart", daemon=True
                ).start()
        self.rpc.submit(
            self._publish,
            bus.MemoryRestart(
                host=self.host,
                group=group,
                name=name,
                pid=pid,
                measured_bytes=reading.bytes,
                limit_bytes=rule.limit,
                rule=rule.label,
                measure=self.config.measure,
                dry_run=action == "dry_run",
            ),
        )
        uptime = None if started is None else self.wall() - started
        if self.config.uptime is None or uptime is None or uptime <= self.config.uptime:
            self._notify("memory_restart", group, name, reading, rule, action)

    # ------------------------------------------------------------------ acting, off-loop

    def _restart_polling(self, key: str) -> None:
        try:
            self.client.stop(key, wait=False)
            # Poll rather than stop(wait=True): a stop may outlast the RPC timeout.
            deadline = self.clock() + COMPAT_STOP_TIMEOUT
            while self.clock() < deadline:
                state = self.client.process_info(key).get("statename")
                if state in ("STOPPED", "EXITED", "FATAL"):
                    break
                time.sleep(0.25)
            self.client.start(key, wait=False)
        except SupervisorError as exc:
            log.error("memmon.restart_failed", process=key, error=str(exc))
            return
        finally:
            with self._lock:
                self._compat_pending.discard(key)
        log.info("memmon.restarted", process=key)

    def _publish(self, message: bus.Message) -> None:
        try:
            self.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(message))
        except SupervisorError as exc:
            log.warning("memmon.publish_failed", kind=type(message).__name__, error=str(exc))

    def _publish_limits(self, limits: dict[str, int]) -> None:
        if limits == self._published:
            return
        self._published = limits
        self.rpc.submit(
            self._publish,
            bus.MemoryLimits(
                host=self.host,
                limits=dict(limits),
                measure=self.config.measure,
                cumulative=self.config.cumulative,
            ),
        )

    def _sinks(self) -> list[Any]:
        # Imported only when a notice is configured: the mail machinery costs memory.
        from listeners.notify import FileSink, SendmailSink

        sinks: list[Any] = []
        if self.config.email:
            prefix = f"memmon [{self.config.name}]:" if self.config.name else "memmon:"
            sinks.append(
                SendmailSink(
                    list(self.config.email), self.config.sendmail_program, subject_prefix=prefix
                )
            )
        if self.config.alert_file:
            sinks.append(FileSink(self.config.alert_file))
        return sinks

    def _notify(
        self, kind: str, group: str, name: str, reading: Reading, rule: Rule, action: str | None
    ) -> None:
        if not (self.config.email or self.config.alert_file):
            return
        if self._notifier is None:
            self._notifier = Worker("memmon-notify")
        self._notifier.submit(self._deliver, kind, group, name, reading, rule, action)

    def _deliver(
        self, kind: str, group: str, name: str, reading: Reading, rule: Rule, action: str | None
    ) -> None:
        from listeners.notify import Alert, SinkError

        verb = "would restart" if action == "dry_run" else "restarted"
        if kind == "restarts_exhausted":
            count, window = self.config.max_restarts or (0, 0.0)
            text = (
                f"{group}:{name} uses {format_size(reading.bytes)} {self.config.measure.upper()},"
                f" over its limit {format_size(rule.limit)} ({rule.label}), after {count}"
                f" restarts within {window:g}s; memmon no longer restarts it."
            )
        else:
            text = (
                f"memmon {verb} {group}:{name} because it used {format_size(reading.bytes)}"
                f" {self.config.measure.upper()} ({reading.bytes} bytes), over its limit"
                f" {format_size(rule.limit)} ({rule.label})."
            )
        alert = Alert(
            kind=kind,
            host=self.host,
            group=group,
            name=name,
            time=self.wall(),
            message=text,
            details={
                "measured_bytes": reading.bytes,
                "limit_bytes": rule.limit,
                "rule": rule.label,
                "measure": self.config.measure,
                "dry_run": action == "dry_run",
            },
        )
        for sink in self._sinks():
            try:
                sink.send(alert)
            except SinkError as exc:
                log.error("memmon.notice_failed", sink=sink.name, error=str(exc))
            else:
                log.info("memmon.notice_sent", sink=sink.name, process=f"{group}:{name}")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = parse_args(argv, parser)
    configure(config.log_level)
    client = Supervisor(config.connection)
    try:
        infos = client.all_process_info()
    except SupervisorError as exc:
        log.error(
            "memmon.supervisord_unreachable",
            error=str(exc),
            hint="memmon asks supervisord for its processes once at start, to check the -p"
            " names and learn the pids; start memmon under supervisord or pass --server-url",
        )
        sys.stderr.write(f"supervisor-memmon: {exc}\n")
        return 1
    unknown = unknown_programs(config, infos)
    if unknown:
        known = sorted(
            {str(i["group"]) for i in infos} | {f"{i['group']}:{i['name']}" for i in infos}
        )
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        parser.error(
            f"unknown program {', '.join(repr(u) for u in unknown)} in -p: expected a process"
            f" name, a program name or group:name that supervisord knows ({shown})"
        )
    # one cached /proc descriptor per watched pid: room for hosts with many workers
    raise_fd_limit(65536)
    memmon = Memmon(config, client, self_key=self_name())
    memmon.start(infos)
    return protocol.run(memmon)


if __name__ == "__main__":
    sys.exit(main())
