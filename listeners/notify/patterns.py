"""Log-pattern alerts: errors a process writes without crashing (PHP fatal errors, tracebacks).

crashmail feeds it the data of PROCESS_LOG_STDERR/STDOUT events (a program needs
``stderr_events_enabled=true``). Data comes in chunks that may end mid-line, so each stream
keeps its unfinished line. A multi-line trace (a Python traceback with its chained causes, a PHP
``Uncaught ... Stack trace: ... thrown in``) is one match. A match is held for a short grace
first: when the process dies of the same error, the crash alert names it and the pattern alert
is dropped, so one error is one alert. Storm rules (``PHP Warning``) match only N times within a
window. Hot path: one combined regular expression per chunk; lines are looked at only from the
first hit on.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from listeners.core.events import ProcessLogEvent
from listeners.core.names import full_name, group_of
from listeners.core.units import parse_rate
from listeners.notify.alert import Alert, one_line

if TYPE_CHECKING:
    from listeners.core.cli import ArgumentAdder

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_STORM",
    "PRESETS",
    "LogWatch",
    "Match",
    "Rule",
    "add_pattern_args",
    "parse_pattern",
    "pattern_alert",
]

#: Seconds a match waits for the process to exit of it (then the crash alert says it all).
DEFAULT_GRACE = 2.0
#: A storm rule alerts when it matched this many times within this many seconds.
DEFAULT_STORM = (20, 60.0)
#: Seconds without a new line after which an open multi-line trace is complete.
IDLE_CLOSE = 0.5
MAX_TRACE_LINES = 60
MAX_PARTIAL = 65536

_PHP_CONTINUES = re.compile(r"(?:PHP )?(?:Stack trace:|#\d+ |  thrown in |PHP +\d+\. )")
_PY_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_PY_HEADER = "Traceback (most recent call last):"


@dataclass(frozen=True)
class Rule:
    """``trace`` says how a match continues over the next lines: ``php``, ``python`` or ``""``."""

    name: str
    title: str
    regex: str
    trace: str = ""
    storm: bool = False


PRESETS: dict[str, tuple[Rule, ...]] = {
    "php": (
        Rule(
            "php_memory_limit",
            "PHP ran out of memory (memory_limit)",
            r"Fatal error: +Allowed memory size of \d+ bytes exhausted",
            trace="php",
        ),
        Rule("php_fatal", "PHP fatal error", r"(?:PHP )?Fatal error: ", trace="php"),
        Rule("php_warning", "PHP warnings", r"(?:PHP )?Warning: ", storm=True),
    ),
    "python": (
        Rule("python_traceback", "Python traceback", re.escape(_PY_HEADER), trace="python"),
    ),
}


def parse_pattern(text: str) -> tuple[Rule, ...]:
    """``php``, ``python`` or ``regex:EXPR`` (one line); a bad one raises ValueError."""
    if text in PRESETS:
        return PRESETS[text]
    if text.startswith("regex:") and text[6:]:
        try:
            re.compile(text[6:])
        except re.error as exc:
            raise ValueError(f"invalid --pattern {text!r}: {exc}") from None
        return (Rule("custom", "log line matched", text[6:]),)
    presets = ", ".join(PRESETS)
    raise ValueError(f"invalid --pattern {text!r}: expected a preset ({presets}) or regex:EXPR")


def add_pattern_args(group: ArgumentAdder, arg_type: Callable[[Callable[[str], Any]], Any]) -> None:
    """crashmail's --pattern and --pattern-storm (``arg_type``: ValueError -> usage error)."""
    group.add_argument(
        "--pattern",
        action="append",
        default=[],
        type=arg_type(parse_pattern),
        metavar="PRESET",
        help="alert on errors in the output of processes that keep running (needs"
        " stderr_events_enabled=true and PROCESS_LOG events): php, python or regex:EXPR;"
        " repeatable (default: none)",
    )
    group.add_argument(
        "--pattern-storm",
        type=arg_type(parse_rate),
        default=DEFAULT_STORM,
        metavar="N/WINDOW",
        help="storm rules (PHP Warning) alert at N matches within WINDOW (default: 20/1m)",
    )


@dataclass
class Match:
    """One alert-worthy piece of output: a line, a whole trace, or a storm's count."""

    group: str
    name: str
    pid: int
    channel: str
    rule: Rule
    lines: list[str]
    first: float
    count: int = 1
    more: int = 0
    last: float = 0.0
    ready: float = 0.0

    @property
    def full_name(self) -> str:
        return full_name(self.group, self.name)

    @property
    def text(self) -> str:
        """What the alert's title says."""
        if self.rule.storm:
            return f"{self.count} {self.rule.title} within the storm window"
        if self.rule.trace == "python":
            said = next((ln for ln in reversed(self.lines) if ln and not ln[0].isspace()), "")
        else:
            hit = re.search(self.rule.regex, self.lines[0])
            said = self.lines[0][hit.end() :] if hit and hit.end() < len(self.lines[0]) else ""
            said = said if said.strip() else self.lines[0]
        return f"{self.rule.title}: {one_line(said.strip(), 160)}"


@dataclass
class _Stream:
    partial: str = ""
    open: Match | None = None
    python_ended: bool = False
    hits: dict[str, deque[float]] = field(default_factory=dict)


class LogWatch:
    """Turns process output into Matches; ``due(now)`` hands over those past their grace."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        grace: float = DEFAULT_GRACE,
        storm: tuple[int, float] = DEFAULT_STORM,
    ) -> None:
        self.rules = tuple(dict.fromkeys(rules))
        self.grace = grace
        self.storm = storm
        self._any = (
            re.compile("|".join(f"(?:{r.regex})" for r in self.rules)) if self.rules else None
        )
        self._each = [(re.compile(r.regex), r) for r in self.rules]
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._pending: list[Match] = []
        self._dead: dict[tuple[str, int], None] = {}
        self.lines_seen = 0

    def feed_event(self, event: ProcessLogEvent, now: float) -> None:
        """A PROCESS_LOG_STDOUT/STDERR event."""
        self.feed(event.groupname, event.processname, event.pid, event.channel, event.data, now)

    def feed(self, group: str, name: str, pid: int, channel: str, data: str, now: float) -> None:
        """One PROCESS_LOG event's data."""
        if self._any is None or (full_name(group, name), pid) in self._dead:
            return
        stream = self._streams.setdefault((full_name(group, name), channel), _Stream())
        text = stream.partial + data
        cut = text.rfind("\n")
        stream.partial = text[cut + 1 :][-MAX_PARTIAL:]
        if cut < 0:
            return
        text = text[:cut]
        if stream.open is None:
            hit = self._any.search(text)
            if hit is None:
                return
            text = text[text.rfind("\n", 0, hit.start()) + 1 :]
        for line in text.split("\n"):
            self._line(stream, group, name, pid, channel, line, now)

    def _line(
        self, s: _Stream, group: str, name: str, pid: int, channel: str, line: str, now: float
    ) -> None:
        self.lines_seen += 1
        m = s.open
        if m is not None:
            if self._continues(s, m, line):
                if len(m.lines) < MAX_TRACE_LINES:
                    m.lines.append(line)
                else:
                    m.more += 1
                m.last = now
                return
            self._close(s, now)
        for regex, rule in self._each:
            if regex.search(line) is None:
                continue
            if rule.storm:
                self._storm(s, group, name, pid, channel, rule, line, now)
            else:
                new = Match(group, name, pid, channel, rule, [line], now, last=now)
                if rule.trace:
                    s.open, s.python_ended = new, False
                else:
                    self._hold(new, now)
            return

    def _continues(self, s: _Stream, m: Match, line: str) -> bool:
        if m.rule.trace == "php":
            return _PHP_CONTINUES.match(line) is not None
        if not s.python_ended:
            # inside a traceback: indented frames; the first unindented line ends it
            if line and not line[0].isspace():
                s.python_ended = True
            return True
        if line.strip() in ("", *_PY_CHAINED) or line.strip() == _PY_HEADER:
            s.python_ended = line.strip() != _PY_HEADER
            return True
        return False

    def _storm(
        self,
        s: _Stream,
        group: str,
        name: str,
        pid: int,
        channel: str,
        rule: Rule,
        line: str,
        now: float,
    ) -> None:
        count, window = self.storm
        hits = s.hits.setdefault(rule.name, deque())
        hits.append(now)
        while hits and now - hits[0] >= window:
            hits.popleft()
        if len(hits) >= count:
            hits.clear()
            self._hold(Match(group, name, pid, channel, rule, [line], now, count=count), now)

    def _close(self, s: _Stream, now: float) -> None:
        if s.open is not None:
            while len(s.open.lines) > 1 and not s.open.lines[-1].strip():
                s.open.lines.pop()
            self._hold(s.open, s.open.last)
        s.open = None

    def _hold(self, m: Match, now: float) -> None:
        m.ready = now + self.grace
        self._pending.append(m)

    def exited(self, group: str, name: str, pid: int | None) -> int:
        """The process died: what it wrote is in the crash alert; drop it here. Returns drops."""
        full = full_name(group, name)
        if pid:
            self._dead[(full, pid)] = None
            while len(self._dead) > 4096:
                del self._dead[next(iter(self._dead))]
        dropped = 0
        for (proc, _), s in self._streams.items():
            if proc == full:
                dropped += s.open is not None
                s.open, s.partial = None, ""
        kept = [m for m in self._pending if m.full_name != full]
        dropped += len(self._pending) - len(kept)
        self._pending = kept
        return dropped

    def due(self, now: float) -> list[Match]:
        """Matches past their grace, in order; traces idle for IDLE_CLOSE are complete."""
        for s in self._streams.values():
            if s.open is not None and now - s.open.last >= IDLE_CLOSE:
                self._close(s, now)
        ready = [m for m in self._pending if m.ready <= now]
        if ready:
            self._pending = [m for m in self._pending if m.ready > now]
        return ready

    def forget(self, group: str) -> int:
        """A group was removed: its streams, dead pids and waiting matches go; returns how many."""

        def of(process: str) -> bool:
            return group_of(process) == group

        streams = [k for k in self._streams if of(k[0])]
        dead = [k for k in self._dead if of(k[0])]
        for key in streams:
            del self._streams[key]
        for pid in dead:
            del self._dead[pid]
        kept = [m for m in self._pending if m.group != group]
        dropped = len(self._pending) - len(kept)
        self._pending = kept
        return len(streams) + len(dead) + dropped


def pattern_alert(m: Match, *, host: str, key: str, time: float) -> Alert:
    """The alert for one match: the title names it, the trace is the 'stderr tail'."""
    body = "\n".join(m.lines)
    if m.more:
        body += f"\n({m.more} more lines)"
    return Alert(
        kind="log_pattern",
        host=host,
        group=m.group,
        name=m.name,
        time=time,
        count=m.count,
        key=key,
        message=f"{m.text} (pid {m.pid}, {m.channel}); the process kept running",
        stderr_tail=body,
        details={
            "pattern": m.rule.name,
            "pid": m.pid,
            "channel": m.channel,
            "reason_text": m.text,
        },
    )
