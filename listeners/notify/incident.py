"""Crash-loop incidents: one problem, one alert, until it is really over.

An incident opens with the crash_loop alert and then absorbs what the same process does: its
further exits are counted (no alert each), a reminder goes at most every ``repeat`` seconds,
a stop on purpose or the group's removal (``supervisor-tasks disable``) is noted once and leaves
the incident open, and only RUNNING for a whole ``stable`` window resolves it. An incident whose
group stays removed is dropped, without an alert, after ``REMOVED_KEEP`` (7 days, as long as an
Alertmanager alert of this kind fires without news). The open incidents live in the outbox (one
JSON row per process), so a restarted crashmail, or one under a restarted supervisord, continues
them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from listeners.core.log import get_logger
from listeners.core.names import full_name
from listeners.notify.alert import Alert, duration_words
from listeners.notify.outbox import Outbox

__all__ = [
    "DEFAULT_REPEAT",
    "FATAL_HOLD",
    "REMOVED_KEEP",
    "STOP_NOTE_HOLD",
    "IncidentBook",
    "LoopIncident",
]

#: ``--repeat`` default: a reminder every 4 hours, Alertmanager's repeat_interval.
DEFAULT_REPEAT = 4 * 3600.0
#: Seconds a loop alert opened by a failed start waits: supervisord enters FATAL right after
#: the last BACKOFF (process.py transition()), and the two belong in one message. FATAL comes
#: only once the BACKOFF is answered, which waits for the outbox's commit: on a busy disk
#: that took over a second, and the FATAL then went as a second alert.
FATAL_HOLD = 5.0
#: Seconds the "stopped on purpose" note waits: ``supervisorctl restart`` (what every loop alert
#: tells the reader to run after a fix) is a stop and a start, and its stop is no news.
STOP_NOTE_HOLD = 15.0
#: Seconds an incident of a removed group is kept for its return; then it is dropped silently.
#: The same as the Alertmanager sink's hold for state alerts, so both end together.
REMOVED_KEEP = 7 * 86400.0

log = get_logger("listeners.notify.incident")


@dataclass
class LoopIncident:
    """The state of one open crash-loop incident (stored as JSON in the outbox)."""

    group: str
    name: str
    key: str
    opened: float
    exits: int
    last_exit: float
    reminded: float
    reminders: int = 0
    running_since: float | None = None
    stopped: bool = False
    stopped_noted: bool = False
    fatal: bool = False
    fatal_sent: bool = False
    #: when supervisord removed the group (None: it has the process)
    removed: float | None = None

    @property
    def process(self) -> str:
        return full_name(self.group, self.name)


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class IncidentBook:
    """The open incidents of one crashmail; every method returns the alerts to record now."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        host: str,
        stable: float,
        repeat: float = DEFAULT_REPEAT,
        clock: Callable[[], float],
    ) -> None:
        self.outbox = outbox
        self.host = host
        self.stable = stable
        self.repeat = repeat
        self.clock = clock
        self._open: dict[str, LoopIncident] = {}
        for process, body in outbox.open_loops().items():
            try:
                inc = LoopIncident(**json.loads(body))
            except (TypeError, ValueError):
                outbox.close_loop(process)
                continue
            # A saved stable clock may have run through a downtime: supervisord stops its
            # listeners before it hands them the STOPPED of its last group, so no stop reset
            # it. It starts again from the first snapshot (seed_running) or the next RUNNING.
            inc.running_since = None
            self._open[process] = inc

    def get(self, process: str) -> LoopIncident | None:
        return self._open.get(process)

    def __contains__(self, process: object) -> bool:
        return process in self._open

    def processes(self) -> list[str]:
        """``group:name`` of every open incident."""
        return list(self._open)

    def _save(self, inc: LoopIncident) -> None:
        self.outbox.save_loop(inc.process, json.dumps(asdict(inc), sort_keys=True))

    def _alert(self, inc: LoopIncident, kind: str, key: str, message: str, **kw: object) -> Alert:
        details = {"opened": inc.opened, "exits": inc.exits, "incident": inc.key}
        details.update(kw.pop("details", {}) or {})  # type: ignore[call-overload]
        return Alert(
            kind=kind,
            host=self.host,
            group=inc.group,
            name=inc.name,
            time=self.clock(),
            key=key,
            count=inc.exits,
            message=message,
            details=details,
            **kw,  # type: ignore[arg-type]
        )

    # ---------------------------------------------------------------- transitions

    def open(
        self, group: str, name: str, exits: int, *, key: str, window: float, failed_start: bool
    ) -> Alert:
        """The crash_loop alert that opens an incident."""
        now = self.clock()
        inc = LoopIncident(group, name, key, now, exits, now, now)
        self._open[inc.process] = inc
        self._save(inc)
        what = "failed starts" if failed_start else "unexpected exits or failed starts"
        return self._alert(
            inc,
            "crash_loop",
            key,
            f"{exits} {what} within {duration_words(window)}. This is one incident: further"
            f" exits are counted, not alerted; a reminder follows every"
            f" {duration_words(self.repeat)} while it lasts, and a resolved alert once it has"
            f" run for {duration_words(self.stable)}. Read the stderr tail below, fix the"
            f" cause, then: supervisorctl restart {group}:{name}",
        )

    def exited(self, process: str) -> None:
        """An unexpected exit or a failed start of a process with an open incident."""
        inc = self._open[process]
        now = self.clock()
        inc.exits += 1
        inc.last_exit = now
        inc.running_since = None
        inc.stopped = False
        inc.fatal = False  # started again after FATAL: looping again, not given up
        inc.removed = None
        self._save(inc)

    def running(self, process: str) -> None:
        inc = self._open[process]
        if inc.running_since is None:
            inc.running_since = self.clock()
            inc.stopped = False
            inc.fatal = False
            inc.removed = None
            self._save(inc)

    def held(self, process: str) -> None:
        """supervisor-health stopped it between tries: still looping; not running, so not
        stable either, and not stopped on purpose (no note, reminders go on)."""
        inc = self._open[process]
        if inc.running_since is not None:
            inc.running_since = None
            self._save(inc)

    def starting(self, process: str) -> None:
        """Started again: a stop note still waiting for its hold is withdrawn (a restart, or a
        stop and start by hand, said nothing worth a message), and a later stop may note."""
        inc = self._open[process]
        if inc.stopped_noted and self.outbox.withdraw_unsent(_key(inc.key, "stopped")):
            inc.stopped_noted = False
            self._save(inc)

    def stopped(self, process: str) -> Alert | None:
        """Stopped on purpose: the incident stays open; said once per incident."""
        inc = self._open[process]
        inc.running_since = None
        inc.stopped = True
        self._save(inc)
        return self._stopped_note(
            inc,
            "stopped on purpose while crash looping",
            "Stopping it again says nothing more.",
        )

    def _stopped_note(self, inc: LoopIncident, what: str, tail: str) -> Alert | None:
        """The one note an incident gets for being stopped or removed; None once said."""
        if inc.stopped_noted:
            return None
        inc.stopped_noted = True
        self._save(inc)
        note = "removed" if inc.removed is not None else "stopped"
        return self._alert(
            inc,
            "crash_loop",
            _key(inc.key, "stopped"),
            f"{what} ({inc.exits} exits or failed starts since it began"
            f" {duration_words(self.clock() - inc.opened)} ago). The incident stays"
            f" open: it resolves once the process has run for {duration_words(self.stable)}"
            f" after a fix. {tail}",
            details={"note": note},
        )

    def fatal(self, process: str) -> Alert | None:
        """supervisord gave up: folded into the loop alert when that has not gone yet."""
        inc = self._open[process]
        inc.fatal = True
        inc.running_since = None
        hint = (
            f"supervisord gave up starting it (FATAL) after {inc.exits} exits or failed starts;"
            f" it stays down until you fix the cause and run: supervisorctl start {process}"
        )
        for pending in self.outbox.unsent(inc.key):
            merged = replace(
                pending,
                message=pending.message + "\n\n" + hint,
                count=inc.exits,
                details={**pending.details, "fatal": True},
            )
            if self.outbox.update_unsent(inc.key, merged):
                inc.fatal_sent = True
        if inc.fatal_sent:
            self._save(inc)
            return None
        inc.fatal_sent = True
        self._save(inc)
        return self._alert(inc, "fatal", _key(inc.key, "fatal"), hint)

    def check(self) -> list[Alert]:
        """Resolved alerts for incidents stable for a whole window; reminders that are due."""
        now = self.clock()
        out: list[Alert] = []
        for process, inc in list(self._open.items()):
            since = inc.running_since
            if inc.removed is not None and now - inc.removed >= REMOVED_KEEP:
                # the group never came back: nothing to resolve, nothing left to watch
                del self._open[process]
                self.outbox.close_loop(process)
                log.info(
                    "crashmail.incident_dropped",
                    process=process,
                    removed_for=round(now - inc.removed),
                    exits=inc.exits,
                )
            elif since is not None and now - since >= self.stable:
                del self._open[process]
                self.outbox.close_loop(process)
                lasted = duration_words(since - inc.opened)
                out.append(
                    self._alert(
                        inc,
                        "resolved",
                        _key(inc.key, "resolved"),
                        f"stable again: RUNNING for {duration_words(now - since)}. The crash"
                        f" loop lasted {lasted} and saw {inc.exits} exits or failed starts.",
                        resolves="crash_loop",
                        details={"started": inc.opened, "lasted": since - inc.opened},
                    )
                )
            elif (
                not inc.stopped
                and now - inc.reminded >= self.repeat
                and (since is None or now - inc.last_exit < self.stable)
            ):
                inc.reminded = now
                inc.reminders += 1
                self._save(inc)
                state = "FATAL (supervisord gave up)" if inc.fatal else "still crash looping"
                out.append(
                    self._alert(
                        inc,
                        "crash_loop",
                        _key(inc.key, "reminder", inc.reminders),
                        f"reminder: {state}; {inc.exits} exits or failed starts in"
                        f" {duration_words(now - inc.opened)}, the last"
                        f" {duration_words(now - inc.last_exit)} ago. Fix the cause, then:"
                        f" supervisorctl restart {process}",
                        details={"reminder": inc.reminders, "fatal": inc.fatal},
                    )
                )
        return out

    def removed(self, group: str) -> list[Alert]:
        """The group left supervisord (``supervisor-tasks disable``, an update): its incidents
        stay open for its return, like a stop; one note each unless a stop already said so.

        Removing is not resolving: nothing was fixed, and Alertmanager's alert keeps firing.
        If the group comes back its exits continue the same incident; if it does not, the
        incident is dropped after ``REMOVED_KEEP`` without an alert.
        """
        out: list[Alert] = []
        for inc in list(self._open.values()):
            if inc.group != group or inc.removed is not None:
                continue
            inc.removed = self.clock()
            inc.running_since = None
            inc.stopped = True
            self._save(inc)
            note = self._stopped_note(
                inc,
                "removed from supervisord while crash looping (supervisor-tasks disable or an"
                " update)",
                f"If it comes back, its exits continue this incident; if not, the incident is"
                f" dropped after {duration_words(REMOVED_KEEP)} without a resolved alert.",
            )
            if note is not None:
                out.append(note)
        return out

    def seed_running(self, running: set[str]) -> None:
        """After a restart: open incidents of processes RUNNING now start their stable clock."""
        for process in running & set(self._open):
            self.running(process)

    def seed(self, states: dict[str, str]) -> None:
        """After a restart, each open incident takes the state its process is in now.

        RUNNING starts the stable clock; STOPPED (``autostart=false``: supervisord did not start
        it again) holds reminders as a stop does, quietly: nobody stopped it on purpose, and
        the note would say so; FATAL makes reminders say FATAL. A reminder describes the
        process as it is, not as it was before the restart.
        """
        self.seed_running({p for p, s in states.items() if s == "RUNNING"})
        for process, state in states.items():
            inc = self._open.get(process)
            if inc is None or state == "RUNNING":
                continue
            if state == "STOPPED" and not inc.stopped:
                inc.stopped = True
                self._save(inc)
            elif state == "FATAL" and not inc.fatal:
                inc.fatal = True
                self._save(inc)
            elif state in ("STARTING", "BACKOFF") and (inc.stopped or inc.fatal):
                inc.stopped = inc.fatal = False
                self._save(inc)
