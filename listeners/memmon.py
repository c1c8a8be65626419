"""supervisor-memmon: restart processes that use more memory than their ceiling.

A drop-in for superlance's memmon (same flags, same meaning) that learns pids from
PROCESS_STATE events instead of polling supervisord, reads /proc instead of forking ``ps``,
restarts without blocking the event loop, and announces its limits and restarts on
supervisord's bus (REMOTE_COMMUNICATION ``listeners.memmon``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from listeners.core import bus, cli, protocol
from listeners.core.background import Submitter, Worker
from listeners.core.log import configure, get_logger
from listeners.core.memory import MEASURES, Meter, Reading, Unreadable
from listeners.core.names import group_of, info_name, split_name
from listeners.core.pools import ConfError, listener_groups, supervisord_conf
from listeners.core.restart import (
    MassGuard,
    RestartBudget,
    Restarter,
    looks_misconfigured,
    restart_polling,
)
from listeners.core.resync import Resync
from listeners.core.rules import (
    NAMESIZE_FORM,
    Rule,
    excluded_by,
    parse_namesize,
    pick_rule,
    unknown_patterns,
)
from listeners.core.state import ProcessTable
from listeners.core.supervisor import (
    Connection,
    Supervisor,
    SupervisorError,
    SupervisorRPC,
    self_name,
)
from listeners.core.units import (
    parse_count,
    parse_duration,
    parse_positive_duration,
    parse_rate,
    parse_share,
    parse_size,
)
from listeners.core.wake import raise_fd_limit

if TYPE_CHECKING:
    from listeners.notify.notice import Notices

__all__ = ["Config", "Memmon", "Rule", "build_parser", "main", "parse_args", "resolve_rule"]

#: A ceiling under this restarts every process it judges: said at start (superlance compat
#: keeps such limits working, as tests and dry runs use them).
TINY_LIMIT = 1 << 20
#: Seconds between two announcements of unchanged ceilings (for exporters started later).
LIMITS_REPEAT = 60.0

log = get_logger("listeners.memmon")

RECONCILE_EVERY = 60.0
#: Even with every PROCESS_STATE event seen, reconcile this often, in case one went astray.
RECONCILE_SAFETY = 3600.0
#: How long a restart without PROCESS_STATE events waits for the process to stop.
COMPAT_STOP_TIMEOUT = 600.0


# --------------------------------------------------------------------------- configuration


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
    supervisord_conf: str | None = None
    max_unavailable: tuple[int, float] = (0, 0.25)
    restart_window: float = 60.0
    connection: Connection = field(default_factory=Connection)
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
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
        type=cli.arg_type(parse_namesize, "NAME=SIZE"),
        help="limit of a process: group:name, a process name, or a program name (all its"
        " processes); repeatable",
    )
    rules.add_argument(
        "-g",
        "--group",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        type=cli.arg_type(parse_namesize, "NAME=SIZE"),
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
        help="also judge event listeners by -g/-a; by default every [eventlistener:x] pool of"
        " supervisord's conf is skipped (a Python listener needs 20-30 MB)",
    )
    rules.add_argument(
        "--supervisord-conf",
        metavar="PATH",
        help="supervisord's conf, read for its [eventlistener:x] sections (default: the -c"
        " file of the supervisord that started memmon)",
    )
    when = p.add_argument_group("when to check and act")
    when.add_argument(
        "--interval",
        metavar="SECONDS",
        type=cli.arg_type(parse_positive_duration),
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
        type=cli.arg_type(parse_count, "count"),
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
        "--max-unavailable",
        metavar="N|P%",
        type=cli.arg_type(parse_share),
        default=(0, 0.25),
        help="restart at most N processes (or P%% of a group, at least one) of a group within"
        " --restart-window (default 25%%); a group of 4+ mostly over at once is held whole, with"
        " one alert that the ceiling looks wrong (100%% turns both off)",
    )
    when.add_argument(
        "--restart-window",
        metavar="DURATION",
        type=cli.arg_type(parse_positive_duration),
        default=60.0,
        help="the window of --max-unavailable (default 1m)",
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


def parse_args(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Flags -> Config; a bad flag exits 2 through ``parser.error`` naming the value."""
    parser = parser or build_parser()
    args = parser.parse_args(cli.join_dash_values(parser, sys.argv[1:] if argv is None else argv))
    if not (args.program or args.group or args.any is not None):
        parser.error("no limit given: use -p NAME=SIZE, -g NAME=SIZE or -a SIZE")
    if any(len(v) != 2 for v in [*args.program, *args.group]):  # argparse drops a "--" value
        parser.error(f"invalid -p/-g value '--': expected {NAMESIZE_FORM}")
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
        supervisord_conf=args.supervisord_conf,
        max_unavailable=args.max_unavailable,
        restart_window=args.restart_window,
        connection=connection,
        log_level=args.log_level,
    )


def resolve_rule(config: Config, group: str, name: str, *, skipped: bool = False) -> Rule | None:
    """The one rule that judges ``group:name``: program > group > any.

    ``skipped`` (excluded, or an event listener) leaves only an explicit -p.
    """
    return pick_rule(config.programs, config.groups, config.any, group, name, skipped=skipped)


def unknown_programs(config: Config, infos: Iterable[Mapping[str, Any]]) -> list[str]:
    """-p names that match no process supervisord knows."""
    return unknown_patterns(config.programs, infos)


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
        client: SupervisorRPC,
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
        pools: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.meter = meter or Meter(config.measure, cumulative=config.cumulative)
        self.rpc = rpc if rpc is not None else Worker("memmon-rpc")
        self.checker = checker if checker is not None else Worker("memmon-check")
        self._notifier = notifier
        self._notices: Notices | None = None
        self.restarter = restarter or Restarter(client, self.rpc, clock=clock)
        self.clock, self.wall, self.host = clock, wall, host or cli.hostname()
        self.self_key = self_key
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.pools = pools or self._read_pools
        self.timer_interval = config.interval
        self.table = ProcessTable(clock=wall, ignore=[self_key] if self_key else [])
        self.watches: dict[str, _Watch] = {}
        self.listener_pools: frozenset[str] = frozenset()  # [eventlistener:x] groups
        self.budget = RestartBudget(*config.max_unavailable, config.restart_window, clock=clock)
        self.guard = MassGuard()  # holds groups most of which are over at once
        self.unreadable: set[str] = set()  # group:name memmon may not read
        self._unreadable_said = False  # the first check publishes its set, empty or not
        self._pools_warned = False
        self._lock = threading.RLock()
        self._check_queued = False
        self._compat_pending: set[str] = set()
        self._seen_state_events = False
        # the seed is start()'s; then a read 60 s after lost events, a group added or while no
        # PROCESS_STATE events come, and the hourly safety read
        self.resync = Resync(spacing=RECONCILE_EVERY, safety=RECONCILE_SAFETY, clock=clock)
        self._published: tuple[dict[str, int], list[str]] | None = None
        self._published_at = float("-inf")
        self.checks = 0

    # ------------------------------------------------------------------ start

    def start(self, infos: list[dict[str, Any]]) -> None:
        """Take the start-up getAllProcessInfo; log the scope; announce the limits."""
        self.resync.begin()
        with self._lock:
            self.table.reconcile(infos)
        self.resync.done()
        self._refresh_pools()
        limits = self._limits()
        log.info(
            "memmon.started",
            rules=[r.label for r in self._rules()],
            measure=self.config.measure,
            cumulative=self.config.cumulative,
            interval=self.config.interval,
            processes=len(self.table),
            judged=len(limits),
            skipped_listeners=sorted(self.listener_pools),
            max_unavailable=self.budget.label,
            excluded=self.config.exclude,
            dry_run=self.config.dry_run,
        )
        for group in self.config.groups:
            if not any(r.group == group.pattern for r in self.table):
                log.warning("memmon.unknown_group", group=group.pattern, rule=group.label)
        for rule in (r for r in self._rules() if r.limit < TINY_LIMIT):
            hint = (
                "no process lives in under 1 MiB: give a unit, e.g. 16MB (a bare number is bytes)"
            )
            log.warning("memmon.limit_tiny", rule=rule.label, limit_bytes=rule.limit, hint=hint)
        self._publish_limits(limits)
        # A first look now, not at the first TICK (up to 60 s with superlance's events=TICK_60):
        # processes memmon may not read are reported at start, and a worker already over its
        # limit is judged (young ones are still spared by --grace).
        self.schedule_check()

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
                gone = self.table.apply_group(event)
                if event.added:
                    # a new [eventlistener:x] is read at the reconcile
                    self.resync.want("group added")
                else:
                    self._prune(gone, event.groupname)
        elif isinstance(event, protocol.TickEvent):
            self.schedule_check()

    def on_timer(self) -> None:
        self.schedule_check()

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        self.resync.want("lost")

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

    def check(self) -> None:
        """One pass: measure every judged pid, decide, act. Runs on the checker thread."""
        self.restarter.check()
        if not self._seen_state_events:
            self.resync.want("no state events")
        if self.resync.take() is not None:
            self._reconcile()
        pending = self.restarter.pending() | self._compat_pending
        with self._lock:
            targets: dict[str, int] = {}
            rules: dict[str, Rule] = {}
            for record in self.table:
                key = record.full_name
                if not record.pid or record.pid == self.own_pid or key == self.self_key:
                    continue
                rule = self._rule_for(record.group, record.name)
                if rule is None or key in pending:
                    continue
                targets[key] = record.pid
                rules[key] = rule
        readings = self.meter.measure(targets)
        first = self.checks == 0
        self.checks += 1
        measured = {k: r for k, r in readings.items() if isinstance(r, Reading)}
        self._note_unreadable(readings)
        held = self._hold_groups(measured, rules, first=first)
        for key, reading in measured.items():
            if group_of(key) in held:
                continue
            self._judge(key, targets[key], reading, rules[key])
        self._publish_limits(self._limits())

    def _note_unreadable(self, readings: Mapping[str, Reading | Unreadable]) -> None:
        """Fail open, but say so: one warning naming what memmon may not read, and the bus."""
        for key, r in readings.items():
            if isinstance(r, Unreadable):
                log.debug("memmon.skipped", process=key, reason=r.reason, detail=r.detail)
        denied = {
            k for k, r in readings.items() if isinstance(r, Unreadable) and r.reason == "denied"
        }
        with self._lock:
            # the first check always speaks: an exporter may still show what an earlier run of
            # memmon could not read (an empty list clears it)
            if denied == self.unreadable and self._unreadable_said:
                return
            self._unreadable_said = True
            new = sorted(denied - self.unreadable)
            self.unreadable = denied
        if new:
            log.warning(
                "memmon.unreadable",
                processes=new,
                reason="denied",
                uid=os.getuid(),
                hint="memmon may not read their /proc memory, so it does not judge them; run"
                " memmon as their user or as root, or --exclude them",
            )
        self.rpc.submit(
            self._publish, bus.ProcessesUnreadable(host=self.host, processes=sorted(denied))
        )

    def _hold_groups(
        self, measured: Mapping[str, Reading], rules: Mapping[str, Rule], *, first: bool
    ) -> set[str]:
        """Groups where most processes are over at once: a wrong ceiling, not many leaks."""
        by_group: dict[str, list[tuple[Reading, Rule]]] = {}
        for key, reading in measured.items():
            by_group.setdefault(group_of(key), []).append((reading, rules[key]))
        over_all = sum(r.bytes > rule.limit for rows in by_group.values() for r, rule in rows)
        if first and looks_misconfigured(over_all, len(measured)):
            log.warning(
                "memmon.ceiling_suspect",
                over=over_all,
                judged=len(measured),
                measure=self.config.measure,
                hint=bus.hint_for(self.config.measure),
            )
        pairs = {g: [(r.bytes, rule.limit) for r, rule in rows] for g, rows in by_group.items()}
        if self.config.max_unavailable == (0, 1.0):  # 100%: a whole group at once is fine
            return set()
        held, new, resumed = self.guard.check(pairs)
        for group in resumed:
            log.info("memmon.restarts_resumed", group=group)
        for o in new:
            message = bus.RestartsHeld(
                host=self.host, group=o.group, over=o.over, judged=o.judged,
                median_bytes=o.median_bytes, limit_bytes=o.limit_bytes,
                measure=self.config.measure, at_start=first,
            )  # fmt: skip
            log.warning("memmon.restarts_held", group=o.group, message=message.describe())
            self.rpc.submit(self._publish, message)
            self._notify(message)
        return held

    def _reconcile(self) -> None:
        try:
            infos = self.client.all_process_info()
        except SupervisorError as exc:
            log.warning("memmon.reconcile_failed", error=str(exc))
            self.resync.done(ok=False)
            return
        with self._lock:
            self.table.reconcile(infos)
            self._prune(self.table.removed)
        self.resync.done()
        self._refresh_pools()
        log.info("memmon.reconciled", processes=len(infos))

    def _prune(self, gone: Iterable[str], group: str | None = None) -> None:
        """Forget what memmon kept of processes supervisord no longer has."""
        for key in gone:
            self.watches.pop(key, None)
            self.unreadable.discard(key)
        present = {r.group for r in self.table}
        self.guard.forget(self.guard.held - present)
        # A removal whose event was lost is found by the reconcile: forget its budget too.
        self.budget.keep_only(present - {group} if group else present)

    def _read_pools(self) -> frozenset[str]:
        """The [eventlistener:x] groups of supervisord's conf; empty (and a warning) if unread."""
        try:
            path = self.config.supervisord_conf or supervisord_conf()
            return listener_groups(path)
        except ConfError as exc:
            if not self._pools_warned:
                self._pools_warned = True
                log.warning(
                    "memmon.listeners_unknown",
                    error=str(exc),
                    hint="memmon cannot tell event listeners from workers and judges them all;"
                    " pass --supervisord-conf PATH or --exclude the listener groups",
                )
            return frozenset()

    def _refresh_pools(self) -> None:
        if not self.config.skip_listeners:
            return
        pools = self.pools()
        with self._lock:
            added = sorted(pools - self.listener_pools)
            self.listener_pools = pools
        if added:
            log.info("memmon.listeners_skipped", groups=added)

    def _rule_for(self, group: str, name: str) -> Rule | None:
        skipped = group in self.listener_pools or excluded_by(self.config.exclude, group, name)
        return resolve_rule(self.config, group, name, skipped=bool(skipped))

    def _limits(self) -> dict[str, int]:
        with self._lock:
            rules = {r.full_name: self._rule_for(r.group, r.name) for r in self.table}
        return {k: r.limit for k, r in rules.items() if r is not None and k != self.self_key}

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
        group = group_of(key)
        if not self.budget.take(group, sum(1 for r in self.table if r.group == group), key):
            return "deferred"  # --max-unavailable: this group's share is restarting already
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
        fields["processes"] = reading.processes
        if action == "ok" or action.endswith("_reported") or action == "exhausted":
            log.debug("memmon.decision", **fields)
            return
        if action in ("sampling", "grace"):
            log.info("memmon.decision", over=watch.over, samples=self.config.samples, **fields)
            return
        if action == "deferred":
            log.info("memmon.decision", max_unavailable=self.budget.label, **fields)
            return
        log.warning("memmon.decision", **fields)
        group, name = split_name(key)
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
            self._notify(message)
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
        restart = bus.MemoryRestart(
            host=self.host,
            group=group,
            name=name,
            pid=pid,
            measured_bytes=reading.bytes,
            limit_bytes=rule.limit,
            rule=rule.label,
            measure=self.config.measure,
            dry_run=action == "dry_run",
        )
        self.rpc.submit(self._publish, restart)
        uptime = None if started is None else self.wall() - started
        if self.config.uptime is None or uptime is None or uptime <= self.config.uptime:
            self._notify(restart)

    # ------------------------------------------------------------------ acting, off-loop

    def _restart_polling(self, key: str) -> None:
        try:
            restart_polling(self.client, key, clock=self.clock, timeout=COMPAT_STOP_TIMEOUT)
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
        """Announce the ceilings when they or the given-up set change, and once a minute:
        an exporter restarted meanwhile would otherwise show no ceiling and nothing given up
        until the next change."""
        exhausted = sorted(k for k, w in self.watches.items() if w.exhausted)
        now = self.clock()
        same = (limits, exhausted) == self._published
        if same and now - self._published_at < LIMITS_REPEAT:
            return
        self._published, self._published_at = (limits, exhausted), now
        self.rpc.submit(
            self._publish,
            bus.MemoryLimits(
                host=self.host,
                limits=dict(limits),
                measure=self.config.measure,
                cumulative=self.config.cumulative,
                exhausted=exhausted,
            ),
        )

    def _notify(self, message: bus.Message) -> None:
        """Queue a notice (restart, exhausted, held) for the -m/--alert-file sinks."""
        if not (self.config.email or self.config.alert_file):
            return
        if self._notifier is None:
            self._notifier = Worker("memmon-notify")
        self._notifier.submit(self._deliver, message)

    def _deliver(self, message: bus.Message) -> None:
        # Imported only when a notice is configured: the mail machinery costs memory. The
        # text is the one crashmail sends for the same bus message (notify/announced.py).
        from listeners.notify import Alert
        from listeners.notify.announced import announced_alert
        from listeners.notify.notice import Notices

        c = self.config
        if self._notices is None:
            self._notices = Notices(c.email, c.sendmail_program, c.name, c.alert_file)
        made = announced_alert(message)
        if made is not None:
            self._notices.send(
                Alert(
                    kind=made.kind,
                    host=self.host,
                    group=made.group,
                    name=made.name,
                    time=self.wall(),
                    **made.fields,
                )
            )


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
        known = sorted({str(i["group"]) for i in infos} | {info_name(i) for i in infos})
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
