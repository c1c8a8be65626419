"""supervisor-crashmail: crash, crash-loop and start-failure alerts that arrive once, fast.

Every alert-worthy event becomes an *incident* committed to the SQLite outbox before the event
is acknowledged. The courier threads fold due incidents into messages (flood control), add the
exit status and stderr tail over XML-RPC, and deliver each message to each sink exactly once.
The event loop itself never waits on RPC or on a sink.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from listeners.core import bus, protocol
from listeners.core.background import Worker
from listeners.core.cli import (
    DEFAULT_SENDMAIL,
    HelpFormatter,
    Parser,
    add_connection_args,
    add_logging_args,
    arg_type,
    connection_from_args,
    default_state_dir,
    hostname,
)
from listeners.core.crashloop import DEFAULT_LOOP, CrashLoopDetector
from listeners.core.exits import OomWatch, oom_paths, read_oom_kills
from listeners.core.log import configure, get_logger
from listeners.core.names import full_name, group_of, info_name, split_name
from listeners.core.resync import Resync
from listeners.core.state import ProcessTable
from listeners.core.supervisor import Connection, Supervisor, SupervisorError, self_name
from listeners.core.units import parse_count, parse_duration, parse_rate
from listeners.core.wake import DeathWatch, Waker, parse_wake_interval, raise_fd_limit
from listeners.core.wake import make_waker as wake_thread
from listeners.notify.alert import Alert
from listeners.notify.announced import announced_alert
from listeners.notify.backoffs import BackoffMemory
from listeners.notify.courier import Courier
from listeners.notify.delivery import DeliveryHealthAnnouncer
from listeners.notify.enrich import enrich_alert
from listeners.notify.flags import add_delivery_args
from listeners.notify.flood import FloodControl, fold
from listeners.notify.groups import PRUNE_EVERY, absent_groups, drop_group
from listeners.notify.incident import DEFAULT_REPEAT, FATAL_HOLD, STOP_NOTE_HOLD, IncidentBook
from listeners.notify.lost import lost_message
from listeners.notify.opening import open_claimed
from listeners.notify.outbox import (
    Outbox,
    OutboxHealth,
    OutboxOwnerError,
    Owner,
    ask_identifier,
    health_announcer,
)
from listeners.notify.patterns import DEFAULT_STORM, LogWatch, Rule, add_pattern_args, pattern_alert
from listeners.notify.sinks import Sink
from listeners.notify.spec import SinkSpec, build_sink, parse_sink

__all__ = [
    "DEFAULT_WAKE",
    "DEFAULT_WAKE_INTERVAL",
    "WAKE_MODES",
    "Config",
    "CrashMail",
    "build_parser",
    "main",
    "parse_args",
    "parse_wake_interval",
]

#: Bus types crashmail turns into alerts: memmon's restarts, health's hung processes, actions.
#: The alerts a crash loop's own alert absorbs while they wait (flood batch or --group-wait).
_LOOP_KINDS = ("crash", "backoff")
_BUS_TYPES = (bus.MEMMON_TYPE, bus.HEALTH_TYPE, bus.ACTIONS_TYPE)
log = get_logger("listeners.crashmail")

#: Seconds to wait after a poolserial gap before reconciling, so a storm has settled.
RECONCILE_SETTLE = 1.0

#: How crashmail wakes supervisord (listeners.core.wake): on exits (pidfd), on a timer, never.
WAKE_MODES = ("exit", "interval", "off")
DEFAULT_WAKE = "exit"
#: Seconds between two wakes in the interval mode (also the fallback of ``exit``); 0 = never.
DEFAULT_WAKE_INTERVAL = 0.2


@dataclass(frozen=True)
class Config:
    programs: tuple[str, ...] = ()
    any: bool = False
    exclude: tuple[str, ...] = ()
    optionalheader: str = ""
    sinks: tuple[SinkSpec, ...] = ()
    loop: tuple[int, float] = DEFAULT_LOOP
    coalesce: float = 60.0
    burst: int = 5
    repeat: float = DEFAULT_REPEAT
    #: seconds a process's crash or failed start waits before it is sent, so a loop that
    #: forms meanwhile is one loop alert (Alertmanager's group_wait); 0 sends at once
    group_wait: float = 0.0
    outbox: str = ""
    identity: str = ""
    keep: int = 10000
    retry_max: float = 300.0
    retry_for: float = 86400.0
    tail_lines: int = 20
    host: str = ""
    wake: str = DEFAULT_WAKE
    wake_interval: float = DEFAULT_WAKE_INTERVAL
    log_level: str = "info"
    connection: Connection = field(default_factory=Connection)
    patterns: tuple[Rule, ...] = ()
    pattern_storm: tuple[int, float] = DEFAULT_STORM

    def watches(self, group: str, name: str) -> bool:
        """superlance's -p/-a plus --exclude; patterns match ``group:name`` or ``name``."""
        full = full_name(group, name)

        def match(patterns: Sequence[str]) -> bool:
            return any(
                fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in patterns
            )

        if match(self.exclude):
            return False
        # superlance parses -a and ignores it (it mails for every process); with no -p we do too.
        return self.any or not self.programs or match(self.programs)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        formatter_class=HelpFormatter,
        prog="supervisor-crashmail",
        description="Alert on crashes, crash loops, start failures and memmon restarts of"
        " supervisord processes; superlance crashmail's -p/-a/-o/-m/-s keep their meaning.",
    )
    sel = p.add_argument_group("which processes (superlance compatible)")
    sel.add_argument(
        "-p",
        "--program",
        action="append",
        default=[],
        metavar="NAME",
        help="watch NAME (name, group:name or a glob such as web:*); repeatable",
    )
    sel.add_argument("-a", "--any", action="store_true", help="watch every process (the default)")
    sel.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="never alert on NAME (same forms as -p); repeatable",
    )
    mail = p.add_argument_group("superlance mail flags")
    mail.add_argument(
        "-o", "--optionalheader", default="", metavar="TEXT", help="prefix of every subject line"
    )
    mail.add_argument(
        "-m",
        "--email",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="mail ADDRESS through the sendmail program (adds a sendmail sink)",
    )
    mail.add_argument(
        "-s",
        "--sendmail_program",
        "--sendmail-program",
        default=DEFAULT_SENDMAIL,
        metavar="COMMAND",
        help="sendmail command for -m (default: %(default)s)",
    )
    add_delivery_args(p)
    det = p.add_argument_group("detection and flood control")
    det.add_argument(
        "--loop",
        type=arg_type(parse_rate),
        default=DEFAULT_LOOP,
        metavar="N/WINDOW",
        help="N unexpected exits or failed starts within WINDOW is a crash loop (default: 3/5m)",
    )
    det.add_argument(
        "--coalesce",
        type=arg_type(parse_duration),
        default=60.0,
        metavar="WINDOW",
        help="repeats within WINDOW are folded into one summary (default: 1m)",
    )
    det.add_argument(
        "--burst",
        type=arg_type(parse_count),
        default=5,
        metavar="N",
        help="at most N alerts sent at once per coalesce window; more wait for the"
        " summary (default: 5)",
    )
    det.add_argument(
        "--repeat",
        type=arg_type(parse_duration),
        default=DEFAULT_REPEAT,
        metavar="DURATION",
        help="while a crash loop lasts, a reminder at most this often (default: 4h)",
    )
    det.add_argument(
        "--group-wait",
        type=arg_type(parse_duration),
        default=0.0,
        metavar="DURATION",
        help="hold a crash or failed start this long before sending it, so a crash loop that"
        " forms meanwhile gives one crash_loop alert instead of a crash and then a loop, like"
        " Alertmanager's group_wait (default: 0, send at once)",
    )
    det.add_argument(
        "--tail-lines",
        type=arg_type(parse_count),
        default=20,
        metavar="N",
        help="lines of stderr in a crash alert (default: 20)",
    )
    det.add_argument("--host", default=None, help="host name in alerts (default: this host's)")
    det.add_argument(
        "--wake",
        choices=WAKE_MODES,
        default=None,
        help="wake supervisord's main loop (a connect to its socket, from a thread) so a crash"
        " reaches crashmail in tens of ms instead of up to 1 s: 'exit' when a watched process"
        " exits (Linux pidfds; falls back to 'interval' where they are unavailable), 'interval'"
        " every --wake-interval, 'off' never (default: exit; off when --wake-interval is 0)",
    )
    det.add_argument(
        "--wake-interval",
        type=arg_type(parse_wake_interval),
        default=DEFAULT_WAKE_INTERVAL,
        metavar="DURATION",
        help="the period of the interval wake, also used when --wake exit must fall back;"
        " 0 means no interval wake at all (alone: the same as --wake off) (default: 200ms)",
    )
    add_pattern_args(det, arg_type)
    add_connection_args(p)
    add_logging_args(p)
    return p


def parse_args(argv: Sequence[str] | None, env: dict[str, str] | None = None) -> Config:
    """Flags -> Config; a bad value exits 2 through ``parser.error`` naming it."""
    env = dict(os.environ) if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    specs: list[SinkSpec] = []
    for text in args.sink:
        try:
            specs.append(parse_sink(text, env))
        except ValueError as exc:
            parser.error(str(exc))
    for address in args.email:
        # superlance's -m: a sendmail sink per flag, through -s.
        specs.append(
            SinkSpec(
                "sendmail",
                f"sendmail:{address}",
                "",
                {"to": address, "program": args.sendmail_program},
            )
        )
    state_dir = default_state_dir(env)
    connection = connection_from_args(parser, args, env)
    # The outbox belongs to one supervisord: two of one user must never share incidents,
    # nor one alert file where their alerts could not be told apart.
    ident = hashlib.sha256(connection.url.encode()).hexdigest()[:12]
    if not specs:
        path = os.path.join(state_dir, f"crashmail-alerts-{ident}.jsonl")
        specs.append(SinkSpec("file", f"file:{path}", path, {}))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        parser.error(f"two sinks are named {dupes[0]!r}: give one of them a name= option")
    wake = args.wake
    if wake is None:
        # --wake-interval 0 turned the wake off before --wake existed; it still does.
        wake = "off" if args.wake_interval == 0 else DEFAULT_WAKE
    if wake == "interval" and args.wake_interval == 0:
        parser.error("invalid --wake interval with --wake-interval 0: give an interval above 0")
    if args.repeat < 1.0:
        parser.error(
            f"invalid --repeat {args.repeat:g}s: expected 1s or more (the default, 4h, is"
            " Alertmanager's repeat_interval)"
        )
    if not args.sendmail_program.strip():
        parser.error("invalid -s/--sendmail_program '': expected a command")
    return Config(
        programs=tuple(args.program),
        any=args.any,
        exclude=tuple(args.exclude),
        optionalheader=args.optionalheader,
        sinks=tuple(specs),
        loop=args.loop,
        coalesce=args.coalesce,
        burst=args.burst,
        repeat=args.repeat,
        group_wait=args.group_wait,
        outbox=args.outbox or os.path.join(state_dir, f"crashmail-outbox-{ident}.sqlite"),
        identity=connection.url,
        keep=args.outbox_keep,
        retry_max=max(args.retry_max, 0.05),
        retry_for=args.retry_for,
        tail_lines=args.tail_lines,
        host=args.host or hostname(),
        wake=wake,
        wake_interval=args.wake_interval,
        log_level=args.log_level,
        connection=connection,
        patterns=tuple(r for rules in args.pattern for r in rules),
        pattern_storm=args.pattern_storm,
    )


class CrashMail(protocol.Handler):
    timer_interval = 0.5

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        *,
        wake: Callable[[], None] = lambda: None,
        on_pids: Callable[[dict[str, int]], None] = lambda pids: None,
        reconcile: Callable[[Callable[[list[dict[str, Any]]], None]], None] | None = None,
        clock: Callable[[], float] = time.time,
        boot: str | None = None,
        me: str | None = None,
        oom: OomWatch | None = None,
        publish: Callable[[str], None] | None = None,
        backoffs: BackoffMemory | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.wake = wake
        self.on_pids = on_pids
        self._watched: dict[str, bool] = {}
        self.clock = clock
        self.boot = boot if boot is not None else str(os.getppid())
        self.me = me
        self.detector = CrashLoopDetector(*config.loop, clock=clock)
        self.flood = FloodControl(config.coalesce, config.burst)
        self.flood.resume(outbox.open_batches())
        self.health = DeliveryHealthAnnouncer(
            outbox,
            [s.name for s in config.sinks],
            host=config.host,
            publish=publish or (lambda data: None),
            clock=clock,
        )
        self.incidents = IncidentBook(
            outbox, host=config.host, stable=config.loop[1], repeat=config.repeat, clock=clock
        )
        self.table = ProcessTable(clock=clock, ignore=[me] if me else [])
        self._reconcile = reconcile
        self._results: queue.Queue[tuple[str, list[dict[str, Any]]]] = queue.Queue()
        self._fatal: set[str] = set()
        self._covered: dict[str, str] = {}
        self.lost_pending = 0
        self.lost_key = ""
        # seed, lost events (settled), and the hourly read that prunes groups gone unseen
        self.resync = Resync(settle=RECONCILE_SETTLE, safety=PRUNE_EVERY, clock=clock)
        self.seeded = False
        self.alerts_recorded = 0
        self.logwatch = LogWatch(config.patterns, storm=config.pattern_storm)
        self.oom = oom if oom is not None else OomWatch(lambda: None)
        self.backoffs = BackoffMemory(stable=config.loop[1]) if backoffs is None else backoffs
        # when each group was last heard of (0: an incident from the outbox), for the prune
        self._seen = dict.fromkeys(map(group_of, self.incidents.processes()), 0.0)
        self._asked = clock()

    def start(self) -> None:
        """Ask for the first snapshot (seeds the table; alerts on nothing)."""
        self._ask()

    def _ask(self) -> None:
        """One getAllProcessInfo off the loop when ``resync`` says one is due; ``_drain``
        takes the answer."""
        if self._reconcile is None:
            return
        why = self.resync.take()
        if why is None:
            return
        if why == "safety" and "lost" in self.resync.wanted():
            why = "lost"  # the hourly read also answers lost events: alert on what it finds
        self._asked = self.clock()
        self._reconcile(lambda infos: self._results.put((why, infos)))

    def forget_group(self, group: str, why: str) -> None:
        """Drop all kept of a group supervisord no longer has; an open incident ends in a note."""
        dropped = drop_group(group, self._watched, self._covered, self._fatal)
        dropped += self.detector.forget_group(group) + self.flood.forget_group(group)
        dropped += self.logwatch.forget(group) + self.backoffs.forget_group(group)
        dropped += len(self.table.forget_group(group))
        for note in self.incidents.removed(group):
            self._record(note, hold=0.0)
        self._seen.pop(group, None)
        self._pids_changed()
        log.info("crashmail.group_forgotten", group=group, why=why, entries=dropped)

    def _pids_changed(self) -> None:
        """Hand the wake thread the pids to watch: those of the processes this instance watches."""
        pids: dict[str, int] = {}
        for name, pid in self.table.pids().items():
            watched = self._watched.get(name)
            if watched is None:
                group, proc = split_name(name)
                watched = self._watched[name] = self.config.watches(group, proc)
            if watched:
                pids[name] = pid
        self.on_pids(pids)

    def _key(self, *parts: object) -> str:
        return hashlib.sha256(repr((self.boot, *parts)).encode()).hexdigest()[:24]

    def _record(self, alert: Alert, *, hold: float | None = None) -> None:
        """Commit ``alert``; with ``hold`` (an incident's own alert) it is never folded."""
        if hold is None:
            due, batch = self.flood.schedule(alert, self.clock())
            if batch == alert.key and alert.kind in _LOOP_KINDS:
                due += self.config.group_wait  # a loop alert within the wait replaces it
        else:
            due, batch = self.clock() + hold, alert.key
        due = self.backoffs.due(alert, due)  # health's hold is said in it: wait for it
        if self.outbox.record(alert, due=due, batch=batch):
            self.alerts_recorded += 1
            log.info(
                "crashmail.alert_recorded",
                kind=alert.kind,
                process=alert.process,
                key=alert.key,
                immediate=batch == alert.key,
            )
            self.wake()
        else:
            log.info("crashmail.duplicate_ignored", kind=alert.kind, key=alert.key)

    def _alert(self, kind: str, group: str = "", name: str = "", *, key: str, **kw: Any) -> Alert:
        return Alert(
            kind=kind,
            host=self.config.host,
            group=group,
            name=name,
            time=self.clock(),
            key=key,
            **kw,
        )

    def handle(self, event: protocol.Event) -> None:
        self._drain()
        if group := getattr(event, "groupname", ""):
            self._seen[group] = self.clock()  # a group heard of now is not pruned unheard
        if isinstance(event, protocol.ProcessStateEvent):
            self._state(event)
        elif isinstance(event, protocol.RemoteCommunicationEvent) and event.type in _BUS_TYPES:
            self._bus(event)
        elif isinstance(event, protocol.ProcessLogEvent):
            if event.full_name != self.me and self.config.watches(
                event.groupname, event.processname
            ):
                self.logwatch.feed_event(event, self.clock())
        elif isinstance(event, protocol.ProcessGroupEvent) and not event.added:
            self.forget_group(event.groupname, "PROCESS_GROUP_REMOVED")

    def _state(self, ev: protocol.ProcessStateEvent) -> None:
        name = ev.full_name
        if name == self.me or not self.config.watches(ev.groupname, ev.processname):
            return
        before = self.table.get(name)
        old_pid = before.pid if before is not None else None
        record = self.table.apply(ev)
        if record is not None and record.pid != old_pid:
            self._pids_changed()
        state = ev.state
        self.backoffs.observe(name, state, self.clock())
        covered = self._covered.get(name)
        if state in ("STARTING", "RUNNING", "STOPPED"):
            self._covered.pop(name, None)
        change = self.detector.observe(ev)
        if state in ("EXITED", "BACKOFF") and not ev.expected:
            # what it wrote as it died is in the crash alert, named as its cause
            self.logwatch.exited(ev.groupname, ev.processname, ev.pid)
        if name in self.incidents:
            self._in_incident(ev, covered)
            return
        if change is not None and change.looping:
            # The exit that makes the loop is reported by the loop alert, not as a crash too.
            self.outbox.drop_unsent(name, _LOOP_KINDS, self.clock())
            alert = self.incidents.open(
                ev.groupname,
                ev.processname,
                change.exits,
                key=self._key(ev.serial, "loop", name),
                window=self.config.loop[1],
                failed_start=state == "BACKOFF",
            )
            self._record(alert, hold=FATAL_HOLD if state == "BACKOFF" else 0.0)
            return
        if state == "EXITED" and ev.expected is False:
            if covered == "EXITED":
                log.info("crashmail.already_reported", process=name, by="reconcile")
            else:
                self._record(
                    self._alert(
                        "crash",
                        ev.groupname,
                        ev.processname,
                        key=self._key(ev.serial, "crash", name),
                        message=f"exited unexpectedly (pid {ev.pid}) from state {ev.from_state}",
                        details={
                            "pid": ev.pid,
                            "from_state": ev.from_state,
                            "oom_kill": self.oom.fired(self.clock()),
                        },
                    )
                )
        elif state == "FATAL":
            self._fatal.add(name)
            if covered != "FATAL":
                self._record(
                    self._alert(
                        "fatal",
                        ev.groupname,
                        ev.processname,
                        key=self._key(ev.serial, "fatal", name),
                        message="supervisord gave up starting it (FATAL). Read the stderr tail"
                        f" below, fix the cause, then: supervisorctl start {name}",
                    )
                )
        elif state == "RUNNING" and name in self._fatal:
            self._fatal.discard(name)
            self._record(
                self._alert(
                    "resolved",
                    ev.groupname,
                    ev.processname,
                    resolves="fatal",
                    key=self._key(ev.serial, "resolved", name),
                    message="running again after FATAL",
                )
            )

    def _in_incident(self, ev: protocol.ProcessStateEvent, covered: str | None) -> None:
        """A state change of a process whose crash loop is an open incident: no alert each."""
        name, state = ev.full_name, ev.state
        if state == "BACKOFF" or (state == "EXITED" and ev.expected is False):
            self.incidents.exited(name)
        elif state == "RUNNING":
            self._fatal.discard(name)
            self.incidents.running(name)
        elif state == "STARTING":
            self.incidents.starting(name)
        elif state == "STOPPED" and self.backoffs.current(name, self.clock()) is not None:
            # supervisor-health holds it between tries: part of the loop, nobody stopped it
            self.incidents.held(name)
            log.info("crashmail.held_by_health", process=name)
        elif state == "STOPPED":
            # supervisorctl stop, a shutdown, tasks disable: stopping is not resolving. The
            # note waits: a restart's STARTING right after withdraws it
            note = self.incidents.stopped(name)
            if note is not None:
                self._record(note, hold=STOP_NOTE_HOLD)
        elif state == "FATAL":
            self._fatal.add(name)
            alert = self.incidents.fatal(name)
            if alert is not None and covered != "FATAL":
                self._record(alert, hold=0.0)

    def _bus(self, ev: protocol.RemoteCommunicationEvent) -> None:
        try:
            msg = bus.decode(ev.data)
        except ValueError as exc:
            log.warning("crashmail.bad_bus_message", error=str(exc), serial=ev.serial)
            return
        if group := getattr(msg, "group", ""):
            self._seen[group] = self.clock()
        if isinstance(msg, bus.Backoff) and self.config.watches(msg.group, msg.name):
            self.backoffs.heard(msg)  # no alert of its own: said in the process's alerts
        made = announced_alert(msg)
        if made is None or (made.name and not self.config.watches(made.group, made.name)):
            return
        key = self._key(ev.serial, made.tag)
        self._record(self._alert(made.kind, made.group, made.name, key=key, **made.fields))

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        if not self.lost_pending:
            self.lost_key = self._key(event.serial, "lost")
        self.lost_pending += count
        self.resync.want("lost")

    def on_timer(self) -> None:
        self._drain()
        now = self.clock()
        self.oom.sample(now)
        for m in self.logwatch.due(now):
            key = self._key("pattern", m.full_name, m.pid, m.first, m.lines[0])
            self._record(pattern_alert(m, host=self.config.host, key=key, time=m.first))
        self.health.tick()
        # The detector's own resolution is the exporter's; crashmail's incidents resolve here.
        self.detector.check()
        for alert in self.incidents.check():
            if alert.kind == "resolved":
                self.detector.forget(alert.process)
            self._record(alert, hold=0.0)
        now = self.clock()
        self.backoffs.prune(now)
        self._ask()

    def _drain(self) -> None:
        while True:
            try:
                why, infos = self._results.get_nowait()
            except queue.Empty:
                return
            self.resync.done()
            if why == "seed":
                self._seed(infos)
            elif why == "lost":
                self.reconciled(infos)
            for group in absent_groups(self._seen, infos, self._asked):
                self.forget_group(group, "absent from supervisord at a reconcile")

    def _seed(self, infos: list[dict[str, Any]]) -> None:
        known = {r.full_name for r in self.table}
        self.table.reconcile(
            [i for i in infos if info_name(i) not in known]
            + [{"group": r.group, "name": r.name, "statename": r.state} for r in self.table]
        )
        for i in infos:
            if i.get("statename") == "FATAL":
                self._fatal.add(info_name(i))
        self._warn_unmatched(infos)
        self.incidents.seed({info_name(i): str(i.get("statename")) for i in infos})
        self.seeded = True
        self._pids_changed()

    def _warn_unmatched(self, infos: list[dict[str, Any]]) -> None:
        """A -p that names no process supervisord has: a typo that would keep it silent."""
        if self.config.any:
            return
        names = [(str(i.get("group", "")), str(i.get("name", ""))) for i in infos]
        for pattern in self.config.programs:
            full = [full_name(g, n) for g, n in names]
            if not any(
                fnmatch.fnmatchcase(f, pattern) or fnmatch.fnmatchcase(n, pattern)
                for f, (_, n) in zip(full, names, strict=True)
            ):
                log.warning(
                    "crashmail.no_process_matches",
                    program=pattern,
                    hint="no process of supervisord matches it: a typo never alerts; give"
                    " group:name or a process name (supervisorctl status lists them)",
                )

    def reconciled(self, infos: list[dict[str, Any]]) -> None:
        """After lost events: alert on processes in BACKOFF/FATAL/EXITED we were not told of.

        A process that is RUNNING again under another pid than we knew restarted while its
        events were lost; whether it crashed is gone with them (supervisord keeps no exit
        status past the respawn), so it is named in the notice, not alerted as a crash.
        """
        found: list[str] = []
        restarted: list[str] = []
        for info in infos:
            group, name = str(info["group"]), str(info["name"])
            full = full_name(group, name)
            state = str(info.get("statename"))
            if full == self.me or not self.config.watches(group, name):
                continue
            record = self.table.get(full)
            pid = int(info.get("pid") or 0)
            if state == "RUNNING" and record is not None and record.pid and pid != record.pid:
                restarted.append(full)
                continue
            told = record is not None and record.state == state
            exit_status = int(info.get("exitstatus") or 0)
            if told or state not in ("BACKOFF", "FATAL", "EXITED"):
                continue
            if state == "EXITED" and exit_status == 0:
                continue
            kind = {"EXITED": "crash", "FATAL": "fatal", "BACKOFF": "backoff"}[state]
            self._covered[full] = state
            if state == "FATAL":
                self._fatal.add(full)
            found.append(full)
            self._record(
                self._alert(
                    kind,
                    group,
                    name,
                    key=self._key("reconcile", full, state, info.get("stop"), info.get("start")),
                    exit_status=exit_status if state == "EXITED" else None,
                    message=f"found {state} by the reconcile after lost events"
                    + (f"; spawnerr: {info['spawnerr']}" if info.get("spawnerr") else ""),
                )
            )
        self.table.reconcile(infos)
        self._pids_changed()
        lost = self.lost_pending
        if lost:
            self.lost_pending = 0
            self._record(
                self._alert(
                    "events_lost",
                    key=self.lost_key or self._key("lost", self.clock()),
                    count=lost,
                    message=lost_message(lost, found, restarted),
                    processes=tuple(found + restarted),
                )
            )


def build_sinks(config: Config, env: dict[str, str] | None = None) -> list[Sink]:
    return [build_sink(s, subject_prefix=config.optionalheader, env=env) for s in config.sinks]


def make_waker(
    config: Config, connection: Connection, pidfd_open: Callable[[int], int] | None = None
) -> Waker | DeathWatch | None:
    """The wake thread for ``--wake`` (None when off); see ``core.wake.make_waker``."""
    return wake_thread(
        config.wake, config.wake_interval, connection, "crashmail", pidfd_open=pidfd_open
    )


def open_outbox(
    config: Config,
    parser: argparse.ArgumentParser,
    on_health: Callable[[OutboxHealth], None],
    identifier: str | None = None,
) -> Outbox:
    """The outbox, claimed for this supervisord (server URL and ``identifier=``); a usage
    error (exit 2) naming its owner when another supervisord's crashmail claimed it. A lock or
    a full disk is waited out (see ``open_claimed``)."""
    try:
        outbox = open_claimed(config.outbox, Owner(config.identity, identifier), on_health)
    except OutboxOwnerError as exc:
        parser.error(str(exc))
    except (OSError, Exception) as exc:  # sqlite3.Error, permissions
        parser.error(f"cannot open the outbox {config.outbox}: {exc}")
    return outbox


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    connection = config.connection
    parser = build_parser()
    configure(config.log_level)
    try:
        sinks = build_sinks(config)
    except ValueError as exc:
        parser.error(str(exc))
    rpc = Supervisor(connection)
    worker = Worker("crashmail-rpc")
    announce = health_announcer(config.host, rpc.send_remote_comm, worker.submit)
    outbox = open_outbox(config, parser, announce, ask_identifier(rpc.identification))
    backoffs = BackoffMemory(stable=config.loop[1])
    courier = Courier(
        outbox,
        sinks,
        fold=fold,
        enrich=lambda a: backoffs.attach(enrich_alert(a, rpc, config.tail_lines)),
        retry_max=config.retry_max,
        retry_for=config.retry_for,
        keep=config.keep,
    )

    def reconcile(done: Callable[[list[dict[str, Any]]], None]) -> None:
        def call() -> None:
            try:
                infos = rpc.all_process_info()
            except SupervisorError as exc:
                log.warning("crashmail.reconcile_failed", error=str(exc))
                infos = []
            done(infos)

        worker.submit(call)

    def publish(data: str) -> None:
        def call() -> None:
            try:
                rpc.send_remote_comm(bus.CRASHMAIL_TYPE, data)
            except SupervisorError as exc:
                log.info("crashmail.health_not_sent", error=str(exc))

        worker.submit(call)

    waker = make_waker(config, connection)
    paths = oom_paths()
    if isinstance(waker, DeathWatch):
        raise_fd_limit(waker.max_fds + 256)
    handler = CrashMail(
        config,
        outbox,
        wake=courier.wake,
        on_pids=waker.watch if isinstance(waker, DeathWatch) else lambda pids: None,
        reconcile=reconcile,
        me=self_name(),
        oom=OomWatch(lambda: read_oom_kills(paths)),
        publish=publish,
        backoffs=backoffs,
    )
    log.info(
        "crashmail.started",
        sinks=[s.name for s in sinks],
        outbox=config.outbox,
        loop=f"{config.loop[0]}/{config.loop[1]:g}s",
        coalesce=config.coalesce,
        burst=config.burst,
        repeat=config.repeat,
        group_wait=config.group_wait,
        open_incidents=sorted(p for p in outbox.open_loops()),
        programs=list(config.programs) or "any",
        exclude=list(config.exclude),
        wake=config.wake,
        wake_interval=config.wake_interval,
        patterns=[r.name for r in config.patterns],
    )
    courier.start()
    handler.start()
    if waker is not None:
        waker.start()
    try:
        return protocol.run(handler)
    finally:
        if waker is not None:
            waker.stop()
        courier.stop()
        worker.close(2.0)
        outbox.close()


if __name__ == "__main__":
    sys.exit(main())
