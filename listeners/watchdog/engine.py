"""The watchdog behind supervisor-health and supervisor-httpok: judge processes, act off-loop.

It takes every rule as data (``Check``, ``WatchdogConfig``): probes (HTTP, TCP, command) with a
period, timeout, failure threshold and initial delay; heartbeats the worker writes to stdout
(capture mode or output events); silence; restart backoff and revival of FATAL processes. The
tools build the config from their own command lines; this module decides nothing of its own.

Nothing here blocks the event loop: probes run on a pool with deadlines, RPC calls on a worker
thread, restarts through core.restart's non-blocking Restarter behind core.guard's rules.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from listeners.core import bus, child, cli, protocol
from listeners.core.background import Submitter, Worker
from listeners.core.log import configure, get_logger
from listeners.core.names import full_name
from listeners.core.restart import Restarter
from listeners.core.resync import Resync
from listeners.core.supervisor import (
    BAD_NAME,
    Connection,
    RPCFault,
    Supervisor,
    SupervisorError,
    SupervisorRPC,
    self_name,
)
from listeners.watchdog.backoff import BackoffBook, Schedule
from listeners.watchdog.guard import RestartGuard
from listeners.watchdog.probes import (
    CommandProbe,
    HttpProbe,
    Probe,
    ProbePool,
    ProbeResult,
    TcpProbe,
    parse_hostport,
)

__all__ = ["Check", "HttpokOptions", "Watchdog", "WatchdogConfig", "serve", "validate"]

log = get_logger("listeners.health")

#: States of a process that is down: a held process is started from one of these.
DOWN_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})

#: Seconds a held process may stay STOPPING after health's stop before SIGTERM is sent again.
STOP_REPEAT_AFTER = 1.0
#: The least wait before a held process's failed start is tried again (else its own delay).
START_RETRY = 5.0
# seconds before a restart the guard held (mass guard, --max-restarts) is tried again
GUARD_RECHECK = 5.0
# how long gcore may take to dump a worker (the restart waits for it, as in superlance)
GCORE_TIMEOUT = 120.0

#: Placeholders a probe's URL, address or command may use, filled per process.
PLACEHOLDERS = {"group": "g", "name": "n_00", "process_num": 0}
_NUM_RE = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class Check:
    """What to watch on the processes that ``pattern`` matches (group:name, group or name)."""

    pattern: str
    http: str | None = None
    statuses: tuple[int, ...] = (200,)
    body: str | None = None
    tcp: str | None = None
    command: tuple[str, ...] = ()
    period: float = 10.0
    timeout: float = 5.0
    failures: int = 3
    initial_delay: float = 0.0
    heartbeat: float | None = None
    heartbeat_text: str | None = None
    silence: float | None = None
    action: str = "restart"
    backoff: Schedule | None = None
    hold_crashes: bool = False
    revive_fatal: bool = False
    where: str = "flags"

    @property
    def probes(self) -> bool:
        return bool(self.http or self.tcp or self.command)

    def matches(self, group: str, name: str) -> bool:
        from fnmatch import fnmatchcase

        p = self.pattern
        return any(fnmatchcase(t, p) for t in (full_name(group, name), group, name))

    def probe_for(self, group: str, name: str) -> Probe | None:
        """The probe of one process, its placeholders filled in."""
        match = _NUM_RE.search(name)
        values = {"group": group, "name": name, "process_num": int(match[1]) if match else 0}
        if self.http:
            return HttpProbe(
                self.http.format_map(values), self.statuses, self.body, timeout=self.timeout
            )
        if self.tcp:
            host, port = parse_hostport(self.tcp.format_map(values))
            return TcpProbe(host, port, timeout=self.timeout)
        if self.command:
            argv = tuple(a.format_map(values) for a in self.command)
            return CommandProbe(argv, timeout=self.timeout)
        return None


@dataclass(frozen=True)
class HttpokOptions:
    """What only superlance httpok's face does: mail, cores, eagerness, probing on TICK."""

    email: str | None = None
    sendmail: str = cli.DEFAULT_SENDMAIL
    gcore: str = "/usr/bin/gcore -o"
    coredir: str | None = None
    eager: bool = True
    name: str | None = None


@dataclass(frozen=True)
class WatchdogConfig:
    checks: tuple[Check, ...]
    grace: float = 30.0
    max_restarts: tuple[int, float] | None = None
    mass_guard: tuple[int, float] | None = (5, 60.0)
    state_dir: str = ""
    log_level: str = "info"
    connection: Connection = field(default_factory=Connection)
    httpok: HttpokOptions | None = None


def validate(check: Check) -> None:
    kinds = [k for k in ("http", "tcp", "command") if getattr(check, k)]
    if len(kinds) > 1:
        raise ValueError(f"one probe per check, got {' and '.join(kinds)}")
    if check.timeout <= 0 or check.period <= 0:
        raise ValueError("period and timeout must be greater than zero")
    for what, value in (("heartbeat", check.heartbeat), ("silence", check.silence)):
        if value is not None and value <= 0:
            raise ValueError(
                f"{what} must be greater than zero (a worker would be judged hung every round)"
            )
    if check.command:
        program = check.command[0]
        if "{" not in program and shutil.which(program) is None:
            raise ValueError(
                f"the probe command {program!r} is not an executable program here: give its"
                " full path (a probe that cannot run fails, and every worker would be restarted)"
            )
    try:
        check.probe_for(str(PLACEHOLDERS["group"]), str(PLACEHOLDERS["name"]))
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"unknown placeholder {exc} in the probe: use {{group}}, {{name}} or {{process_num}}"
        ) from None
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not (check.probes or check.heartbeat or check.silence or check.backoff):
        raise ValueError(
            "nothing to watch: give a probe (http, tcp, command), heartbeat, silence or backoff"
        )


@dataclass
class _Watch:
    """What health knows of one process."""

    group: str
    name: str
    check: Check
    state: str = "UNKNOWN"
    pid: int = 0
    running_since: float | None = None
    failures: int = 0
    probe_ok: bool | None = None
    #: passed a probe or sent a beat since it started: its startup phase (grace) is over
    proven: bool = False
    last_beat: float | None = None
    last_output: float | None = None
    reported: set[str] = field(default_factory=set)
    #: reason -> when it may be judged again: a restart the guard held (guarded, exhausted)
    #: is tried again once its window may have moved on, not never
    held_until: dict[str, float] = field(default_factory=dict)
    #: reasons whose held restart was announced: said once, not on every try
    said_held: set[str] = field(default_factory=set)

    def judged(self, reason: str, now: float) -> bool:
        """True while ``reason`` has a verdict that stands (no new one is due yet)."""
        return reason in self.reported or now < self.held_until.get(reason, 0.0)

    def recovered(self, reason: str) -> None:
        """The process passed its probe, or beat again: a later failure is a new verdict."""
        self.reported.discard(reason)
        self.held_until.pop(reason, None)
        self.said_held.discard(reason)

    @property
    def key(self) -> str:
        return full_name(self.group, self.name)


class Watchdog(protocol.Handler):
    """The listener: probes on its timer (or on TICK for httpok), judges, acts off-loop."""

    timer_interval: float | None = 1.0
    #: Seconds between two HealthStatus messages on the bus (each costs supervisord one RPC).
    status_every = 15.0

    def __init__(
        self,
        config: WatchdogConfig,
        client: SupervisorRPC,
        *,
        pool: ProbePool | None = None,
        rpc: Submitter | None = None,
        restarter: Restarter | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        self_key: str | None = None,
        state_file: str | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.pool = pool or ProbePool(8)
        self.rpc = rpc if rpc is not None else Worker("health-rpc")
        # httpok's superlance conf subscribes to TICK only: no STOPPED event will come, so
        # the restarter polls the stop soon instead of after 30 s.
        poll = 1.0 if config.httpok else 30.0
        self.restarter = restarter or Restarter(client, self.rpc, clock=clock, poll_after=poll)
        self.clock = clock
        self.host = host or cli.hostname()
        self.self_key = self_key
        self.guard = RestartGuard(
            grace=config.grace, per_process=config.max_restarts, mass=config.mass_guard
        )
        if state_file is None and config.state_dir and any(c.backoff for c in config.checks):
            digest = hashlib.sha1(client.url.encode(), usedforsecurity=False).hexdigest()[:10]
            state_file = os.path.join(config.state_dir, f"health-backoff-{digest}.json")
        self.book = BackoffBook(Schedule(), state_file)
        self.watches: dict[str, _Watch] = {}
        self._next_probe: dict[str, float] = {}
        self._starting_by_us: set[str] = set()
        #: Held processes health has asked supervisord to stop, until they are down.
        self._stopping_by_us: set[str] = set()
        #: When health asked for each of those stops, to repeat a SIGTERM supervisord lost.
        self._stop_asked: dict[str, float] = {}
        #: Holds that ended while health's stop was still under way: started once it is down.
        self._start_when_down: set[str] = set()
        self._seen_state = False
        # the seed is start()'s; a read 1 s after lost events settle, and an hourly safety read
        self.resync = Resync(settle=1.0, safety=3600.0, clock=clock)
        self._last_status = 0.0
        self._lock = threading.RLock()
        self.rounds = 0
        periods = [c.period for c in config.checks if c.probes]
        self.timer_interval = max(0.1, min([1.0, *periods]))

    # ------------------------------------------------------------------ processes

    def _check_for(self, group: str, name: str) -> Check | None:
        if self.self_key == full_name(group, name):
            return None
        return next((c for c in self.config.checks if c.matches(group, name)), None)

    def _watch(self, group: str, name: str) -> _Watch | None:
        key = full_name(group, name)
        watch = self.watches.get(key)
        if watch is None:
            check = self._check_for(group, name)
            if check is None:
                return None
            watch = self.watches[key] = _Watch(group, name, check)
        return watch

    def start(self, infos: list[dict[str, Any]]) -> None:
        """Take the start-up getAllProcessInfo and say what is watched."""
        self.resync.begin()
        self._reconcile(infos)
        self.resync.done()
        log.info(
            "health.started",
            watched=sorted(self.watches),
            checks=[f"{c.pattern} ({c.where})" for c in self.config.checks],
            held=sorted(k for k in self.book.holds if self.book.held(k, self.clock())),
        )
        for check in self.config.checks:
            if not any(w.check is check for w in self.watches.values()):
                log.warning("health.no_process_matches", pattern=check.pattern, where=check.where)

    def _reconcile(self, infos: list[dict[str, Any]]) -> None:
        with self._lock:
            for info in infos:
                watch = self._watch(str(info["group"]), str(info["name"]))
                if watch is None:
                    continue
                state = str(info.get("statename", "UNKNOWN"))
                pid = int(info.get("pid") or 0)
                if state == "RUNNING" and (watch.state != "RUNNING" or pid != watch.pid):
                    # a new run seen only by polling (httpok on TICK alone, lost events):
                    # start its judgement afresh, as a RUNNING event would
                    watch.running_since = float(info.get("start") or self.clock())
                    watch.failures = 0
                    watch.probe_ok = None
                    watch.proven = False
                    watch.reported.clear()
                elif state != "RUNNING":
                    watch.running_since = None
                revive = (
                    state == "FATAL"
                    and watch.state != "FATAL"
                    and watch.check.backoff
                    and watch.check.revive_fatal
                )
                watch.state = state
                watch.pid = pid
                hold = self.book.holds.get(watch.key)
                if revive and (hold is None or hold.next_start is None):
                    # FATAL before health started (or while no event said so): revived too
                    self._failed(watch, state, self.clock())

    # ------------------------------------------------------------------ events

    def handle(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.ProcessStateEvent):
            self._seen_state = True
            self._on_state(event)
            self.restarter.observe(event)
        elif isinstance(event, protocol.ProcessCommunicationEvent | protocol.ProcessLogEvent):
            with self._lock:
                watch = self.watches.get(event.full_name)
                if watch is None:
                    return
                now = self.clock()
                watch.last_output = now
                watch.recovered("silence")
                text = watch.check.heartbeat_text
                # a beat is what the worker writes to stdout: its stderr (an error, a
                # traceback) is output, but no sign that it works
                stdout = event.name.endswith("STDOUT")
                if stdout and (text is None or text in event.data):
                    watch.last_beat = now
                    watch.proven = True
                    watch.recovered("heartbeat")
        elif isinstance(event, protocol.TickEvent) and self.config.httpok:
            if self._seen_state:
                self._httpok_round()
            else:
                self.rpc.submit(self._poll_then_probe)

    def _on_state(self, event: protocol.ProcessStateEvent) -> None:
        now = self.clock()
        with self._lock:
            watch = self._watch(event.groupname, event.processname)
            if watch is None:
                return
            key, state, check = watch.key, event.state, watch.check
            if state == "RUNNING" and watch.state == "RUNNING" and event.pid == watch.pid:
                return  # buffered before we started: start() already saw this run
            watch.state = state
            watch.pid = event.pid or (watch.pid if state == "RUNNING" else 0)
            if state == "RUNNING":
                watch.running_since = now
                watch.failures = 0
                watch.probe_ok = None
                watch.proven = False
                watch.last_beat = watch.last_output = None
                watch.reported.clear()
                watch.held_until.clear()
                watch.said_held.clear()
                if check.backoff and key not in self._stopping_by_us:
                    # a respawn that reached RUNNING before health's stop of it (startsecs=0)
                    # is not a run: the hold and its next start stay, or nothing would start
                    # it again once that stop lands
                    self.book.running(key, now)
                return
            watch.running_since = None
            if state in DOWN_STATES:
                self._stopping_by_us.discard(key)
                self._stop_asked.pop(key, None)
            if key in self._start_when_down and state in DOWN_STATES:
                # the hold ended while our stop was still under way (a SIGTERM that reached
                # the child before its exec is lost: it ran on until it exited by itself)
                self._start_when_down.discard(key)
                self._begin_start(key)
                return
            if state == "STARTING":
                ours = key in self._starting_by_us
                self._starting_by_us.discard(key)
                if check.backoff and not ours and self.book.held(key, now):
                    # supervisord's autorestart respawned it at once: hold it until its turn
                    self._ask_stop(key, now)
                return
            if not check.backoff:
                return
            crashed = (state == "EXITED" and event.expected is False) or state == "BACKOFF"
            if (crashed and check.hold_crashes) or (state == "FATAL" and check.revive_fatal):
                self._failed(watch, state, now)

    def _failed(self, watch: _Watch, state: str, now: float) -> None:
        hold = self.book.failed(watch.key, now, watch.check.backoff)
        log.warning(
            "health.backoff",
            process=watch.key,
            state=state,
            failures=hold.failures,
            delay=hold.delay,
            note=f"next start in {hold.delay:g} s",
        )
        self.rpc.submit(
            self._publish,
            bus.Backoff(
                host=self.host,
                group=watch.group,
                name=watch.name,
                failures=hold.failures,
                delay_seconds=hold.delay,
                next_start=now + hold.delay,
                state=state,
            ),
        )
        self._last_status = 0.0  # the exporter hears of the hold in the next round
        if state == "BACKOFF":
            # stopping a BACKOFF process makes it STOPPED at once: supervisord's quick retry
            # would not wait for the delay
            self._ask_stop(watch.key, now)

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        """Missed state events leave watches in old states: read the table once they settle."""
        self.resync.want("lost")

    def on_timer(self) -> None:
        self.round()
        if self.resync.seeded and self.resync.take() is not None:
            self.rpc.submit(self._resync)

    def _resync(self) -> None:
        try:
            infos = self.client.all_process_info()
        except SupervisorError as exc:
            log.warning("health.reconcile_failed", error=str(exc))
            self.resync.done(ok=False)
            return
        self._reconcile(infos)
        self.resync.done()
        log.info("health.reconciled", processes=len(infos))

    def close(self) -> None:
        self.pool.close()
        if isinstance(self.rpc, Worker):
            self.rpc.join(5.0)
            self.rpc.close(1.0)

    # ------------------------------------------------------------------ rounds

    def round(self) -> None:
        """One pass: backoff starts, probes due, heartbeats and silence, the status message."""
        now = self.clock()
        self.rounds += 1
        self.restarter.check()
        with self._lock:
            for key in self.book.due(now):
                self._last_status = 0.0
                watch = self.watches.get(key)
                if watch is None:
                    continue
                log.info("health.backoff_over", process=key)
                if key in self._stopping_by_us and watch.state not in DOWN_STATES:
                    # health's stop is still under way: start it once it is down
                    self._start_when_down.add(key)
                elif watch.state == "FATAL" and not watch.check.revive_fatal:
                    # supervisord gave up meanwhile (its retry count runs on across holds):
                    # without revive-fatal FATAL stays FATAL, as documented
                    log.info("health.fatal_left", process=key, hint="revive-fatal = yes")
                elif watch.state in DOWN_STATES:
                    self._begin_start(key)
                # else it is up already: someone started it during the hold
            self._repeat_lost_stops(now)
            for watch in self.watches.values():
                if watch.check.backoff and watch.state == "RUNNING":
                    self.book.stable(watch.key, now, watch.check.backoff)
            if not self.config.httpok:
                self._probe_due(now)
            for watch in list(self.watches.values()):
                self._judge_quiet(watch, now)
        if now - self._last_status >= self.status_every:
            self._last_status = now
            self.rpc.submit(self._publish, self.status(now))

    def _members(self, now: float) -> dict[Probe, list[str]]:
        """Probes of the RUNNING processes past their initial delay; one probe may serve many."""
        groups: dict[Probe, list[str]] = {}
        for watch in self.watches.values():
            check = watch.check
            if not check.probes or watch.state != "RUNNING" or watch.running_since is None:
                continue
            if now - watch.running_since < check.initial_delay:
                continue
            probe = check.probe_for(watch.group, watch.name)
            if probe is not None:
                groups.setdefault(probe, []).append(watch.key)
        return groups

    def _probe_due(self, now: float) -> None:
        for probe, members in self._members(now).items():
            pkey = probe.describe()
            if self._next_probe.get(pkey, 0.0) > now:
                continue
            period = self.watches[members[0]].check.period
            done = functools.partial(self._probed_key, members)
            if self.pool.submit(pkey, probe, done):
                self._next_probe[pkey] = now + period

    def _probed_key(self, members: list[str], _key: str, result: ProbeResult) -> None:
        self._probed(members, result)

    def _probed(self, members: list[str], result: ProbeResult) -> None:
        """A probe's verdict, on a pool thread."""
        with self._lock:
            for key in members:
                watch = self.watches.get(key)
                if watch is None or watch.state != "RUNNING":
                    continue
                if result.ok:
                    if watch.probe_ok is False:
                        log.info("health.probe_recovered", process=key)
                    watch.failures, watch.probe_ok, watch.proven = 0, True, True
                    watch.recovered("probe")
                    continue
                watch.failures += 1
                watch.probe_ok = False
                log.info(
                    "health.probe_failed",
                    process=key,
                    failures=watch.failures,
                    threshold=watch.check.failures,
                    detail=result.detail,
                )
                if watch.failures >= watch.check.failures and not watch.judged(
                    "probe", self.clock()
                ):
                    self._unhealthy(watch, "probe", result.detail)
        if self.config.httpok and not result.ok and self.config.httpok.email:
            self.rpc.submit(self._mail, members, result.detail)

    def _judge_quiet(self, watch: _Watch, now: float) -> None:
        if watch.state != "RUNNING" or watch.running_since is None:
            return
        for reason, limit, last in (
            ("heartbeat", watch.check.heartbeat, watch.last_beat),
            ("silence", watch.check.silence, watch.last_output),
        ):
            if limit is None or watch.judged(reason, now):
                continue
            age = now - max(last or watch.running_since, watch.running_since)
            if age >= limit:
                what = "no heartbeat" if reason == "heartbeat" else "no output"
                self._unhealthy(watch, reason, f"{what} for {age:.0f} s (limit {limit:g} s)")

    def _unhealthy(self, watch: _Watch, reason: str, detail: str) -> None:
        """Act on a verdict (called with the lock held)."""
        watch.reported.add(reason)
        now = self.clock()
        if watch.check.action == "alert":
            action = "alert"
        else:
            # the grace covers the startup phase only: a process that was healthy once and
            # fails now is judged at once (superlance restarted processes still starting)
            young = None if watch.proven else watch.running_since
            action = self.guard.allow(watch.key, now, young)
        fields = {"process": watch.key, "pid": watch.pid, "reason": reason, "detail": detail}
        if action == "grace":
            # just started: judge again later instead of restarting a process still warming up
            watch.reported.discard(reason)
            watch.failures = 0
            log.debug("health.unhealthy", action=action, **fields)
            return
        if action in ("guarded", "exhausted"):
            # held by the guard, not fixed: judged again once its window may have moved on
            watch.reported.discard(reason)
            watch.held_until[reason] = now + GUARD_RECHECK
            if reason in watch.said_held:
                log.debug("health.unhealthy", action=action, **fields)
                return
            watch.said_held.add(reason)
        else:
            watch.said_held.discard(reason)
        log.warning("health.unhealthy", action=action, **fields)
        if action == "restart":
            core = self.config.httpok.coredir if self.config.httpok else None
            if core:
                self.rpc.submit(self._gcore, watch.key, watch.pid)
            self.restarter.restart(watch.key)
        self.rpc.submit(
            self._publish,
            bus.ProcessHung(
                host=self.host,
                group=watch.group,
                name=watch.name,
                action=action,
                pid=watch.pid,
                reason=reason,
                detail=detail,
            ),
        )

    def status(self, now: float) -> bus.HealthStatus:
        with self._lock:
            probes = {k: int(w.probe_ok) for k, w in self.watches.items() if w.probe_ok is not None}
            ages = {}
            for key, w in self.watches.items():
                if w.check.heartbeat is not None and w.running_since is not None:
                    ages[key] = round(now - max(w.last_beat or 0.0, w.running_since), 3)
            holds = {
                k: round(h.next_start - now, 3)
                for k, h in self.book.holds.items()
                if h.next_start is not None and h.next_start > now
            }
        return bus.HealthStatus(
            host=self.host, probe_success=probes, heartbeat_age=ages, backoff_seconds=holds
        )

    # ------------------------------------------------------------------ httpok's face

    def _httpok_round(self) -> None:
        httpok = self.config.httpok
        if httpok is None:
            return
        with self._lock:
            check = self.config.checks[0]
            probe = check.probe_for("", "")
            members = [k for k, w in self.watches.items() if w.state == "RUNNING"]
        if probe is None or (not members and not httpok.eager):
            return
        self.pool.submit(probe.describe(), probe, functools.partial(self._probed_key, members))

    def _poll_then_probe(self) -> None:
        try:
            self._reconcile(self.client.all_process_info())
        except SupervisorError as exc:
            log.warning("health.reconcile_failed", error=str(exc))
            return
        self._httpok_round()

    def _gcore(self, key: str, pid: int) -> None:
        httpok = self.config.httpok
        if httpok is None or not httpok.coredir or not pid:
            return
        target = os.path.join(httpok.coredir, f"{key.replace(':', '_')}.{int(self.clock())}")
        try:
            done = child.run([*shlex.split(httpok.gcore), target, str(pid)], GCORE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("health.gcore_failed", process=key, error=str(exc))
            return
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            log.warning(
                "health.gcore_failed",
                process=key,
                error=f"{httpok.gcore} exited {done.returncode}: {tail[0][:200]}".rstrip(": "),
            )
            return
        # gcore -o PREFIX writes PREFIX.PID
        log.info("health.core_written", process=key, pid=pid, path=f"{target}.{pid}")

    def _mail(self, members: list[str], detail: str) -> None:
        httpok = self.config.httpok
        if httpok is None or not httpok.email:
            return
        url = self.config.checks[0].http
        subject = f"httpok: {url}: bad status returned"
        if httpok.name:
            subject = f"httpok [{httpok.name}]: {url}: bad status returned"
        body = f"{detail}\n\nprocesses restarted (or left alone, see the log): " + (
            ", ".join(members) or "none"
        )
        text = f"To: {httpok.email}\nSubject: {subject}\n\n{body}\n"
        try:
            child.run(shlex.split(httpok.sendmail), 60, data=text.encode())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("health.mail_failed", error=str(exc))

    # ------------------------------------------------------------------ RPC, off-loop

    def _stop_held(self, key: str) -> None:
        try:
            self.client.stop(key, wait=False)
        except SupervisorError as exc:
            log.debug("health.hold_stop_failed", process=key, error=str(exc))

    def _ask_stop(self, key: str, now: float) -> None:
        """Stop a held process off-loop (called under the lock)."""
        self._stopping_by_us.add(key)
        self._stop_asked[key] = now
        self.rpc.submit(self._stop_held, key)

    def _repeat_lost_stops(self, now: float) -> None:
        """A held process still STOPPING a second after health's stop: send SIGTERM again.

        supervisord's SIGTERM to a child it has just forked is lost when it lands before the
        child's exec (the child still runs supervisord's own handlers); the worker then runs
        on, in STOPPING, until it exits by itself or stopwaitsecs passes. Once is enough:
        after the exec the signal is the worker's own to handle.
        """
        for key, asked in list(self._stop_asked.items()):
            watch = self.watches.get(key)
            if watch is None or watch.state in DOWN_STATES:
                self._stop_asked.pop(key, None)
            elif watch.state == "STOPPING" and now - asked >= STOP_REPEAT_AFTER:
                self._stop_asked.pop(key, None)
                log.info("health.stop_repeated", process=key, after=round(now - asked, 1))
                self.rpc.submit(self._signal_held, key)

    def _signal_held(self, key: str) -> None:
        try:
            self.client.signal(key, "TERM")
        except SupervisorError as exc:
            log.debug("health.hold_signal_failed", process=key, error=str(exc))

    def _begin_start(self, key: str) -> None:
        """Start a held process whose turn has come (called under the lock)."""
        self._starting_by_us.add(key)
        self.rpc.submit(self._start_held, key)

    def _start_held(self, key: str) -> None:
        # a STOPPING process is not started (supervisord logs "already running" and answers
        # True): health never starts one before its own stop is seen through (round())
        try:
            self.client.start(key, wait=False)
        except SupervisorError as exc:
            gone = isinstance(exc, RPCFault) and exc.code == BAD_NAME
            with self._lock:
                self._starting_by_us.discard(key)
                if not gone:  # supervisord restarting, busy, unreachable: try again later
                    hold = self.book.holds.get(key)
                    delay = max(START_RETRY, hold.delay if hold is not None else 0.0)
                    self.book.retry(key, self.clock() + delay)
            log.warning(
                "health.backoff_start_failed",
                process=key,
                error=str(exc),
                retry=None if gone else "after the same delay",
            )

    def _publish(self, message: bus.Message) -> None:
        try:
            self.client.send_remote_comm(bus.HEALTH_TYPE, bus.encode(message))
        except SupervisorError as exc:
            log.warning("health.publish_failed", kind=type(message).__name__, error=str(exc))


def serve(config: WatchdogConfig, argv0: str) -> int:
    configure(config.log_level)
    client = Supervisor(config.connection)
    try:
        infos = client.all_process_info()
    except SupervisorError as exc:
        log.error("health.supervisord_unreachable", error=str(exc))
        sys.stderr.write(f"{argv0}: {exc}\n")
        return 1
    health = Watchdog(config, client, self_key=self_name())
    health.start(infos)
    return protocol.run(health)
