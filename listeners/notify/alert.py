"""The one alert model every sink renders."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from listeners.core.names import full_name, split_name
from listeners.core.units import duration_words

__all__ = [
    "KINDS",
    "Alert",
    "clean_alert",
    "clean_text",
    "collapse_repeats",
    "duration_words",
    "file_record",
    "iso_time",
    "mib",
    "next_steps",
    "render_text",
]

KINDS = (
    "crash",
    "crash_loop",
    "fatal",
    "backoff",
    "memory_restart",
    "restarts_exhausted",
    "hung",
    "restarts_held",
    "events_lost",
    "log_pattern",
    "action",
    "summary",
    "resolved",
)

_TITLES = {
    "crash": "crashed",
    "crash_loop": "is crash looping",
    "fatal": "gave up starting (FATAL)",
    "backoff": "keeps failing to start",
    "memory_restart": "was restarted for using too much memory",
    "restarts_exhausted": "is over its memory limit and no longer restarted",
    "hung": "is alive but not working (health check)",
    "restarts_held": "is mostly over its memory limit: restarts held",
    "events_lost": "lost events",
    "log_pattern": "logged an error",
    "action": "was acted on by hand",
    "summary": "had repeated alerts",
    "resolved": "is stable again",
}
# C0/C1 controls except tab and newline: terminal escapes from process output stop here. Also
# the bidi marks, embeddings, overrides and isolates (U+200E/F, U+202A-E, U+2066-9, U+061C),
# which can make a subject read backwards ("Trojan Source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# ANSI escape sequences (CSI such as colours "ESC[31m", OSC such as titles "ESC]0;..BEL"):
# removed whole, so a coloured stderr line reads as its text.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


def clean_text(text: str) -> str:
    """Untrusted text (process output) without escape sequences and control characters."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", _ANSI.sub("", text))


def iso_time(t: float) -> str:
    """ISO 8601 with the zone, in UTC: ``2026-12-01T23:46:24Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def mib(n: float) -> str:
    """Bytes as ``19.2 MiB``."""
    return f"{n / 1048576:.1f} MiB"


def collapse_repeats(text: str, limit: int = 20, width: int = 300) -> str:
    """Runs of one repeated line become one line with ``(x17)``; at most ``limit`` lines, each
    at most ``width`` characters, newest last."""
    out: list[tuple[str, int]] = []
    for raw in text.rstrip("\n").splitlines():
        line = raw.rstrip()
        if len(line) > width:
            line = line[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"
        if out and out[-1][0] == line:
            out[-1] = (line, out[-1][1] + 1)
        else:
            out.append((line, 1))
    return "\n".join(f"{ln}  (x{n})" if n > 1 else ln for ln, n in out[-limit:])


def one_line(text: str, limit: int = 200) -> str:
    """Text safe for a header or a subject: no CR/LF, no controls, bounded."""
    flat = clean_text(text.replace("\r", " ").replace("\n", " "))
    return flat if len(flat) <= limit else flat[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


@dataclass(frozen=True)
class Alert:
    """Something a person should hear about. ``key`` is stable across retries (dedup)."""

    kind: str
    host: str
    group: str = ""
    name: str = ""
    time: float = field(default_factory=time.time)
    exit_status: int | None = None
    count: int = 1
    message: str = ""
    stderr_tail: str | None = None
    processes: tuple[str, ...] = ()
    resolves: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not self.key:
            digest = hashlib.sha256(
                json.dumps(
                    [self.kind, self.host, self.group, self.name, self.time, self.processes],
                    default=str,
                ).encode()
            ).hexdigest()[:24]
            object.__setattr__(self, "key", digest)

    @property
    def process(self) -> str:
        return full_name(self.group, self.name) if self.group or self.name else ""

    def to_json(self) -> str:
        body = asdict(self)
        body["processes"] = list(self.processes)
        return json.dumps(body, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Alert:
        body = json.loads(text)
        body["processes"] = tuple(body.get("processes") or ())
        return cls(**body)


def clean_alert(alert: Alert) -> Alert:
    """The alert with control, escape and bidi characters taken out of its free-text fields
    (for sinks that pass the fields on as they are: the JSON file and generic webhooks)."""
    return replace(
        alert,
        host=clean_text(alert.host),
        group=clean_text(alert.group),
        name=clean_text(alert.name),
        message=clean_text(alert.message),
        stderr_tail=None if alert.stderr_tail is None else clean_text(alert.stderr_tail),
        processes=tuple(clean_text(p) for p in alert.processes),
    )


def subject(alert: Alert, prefix: str = "") -> str:
    """A one-line subject; untrusted parts cleaned, never a CR or LF."""
    target = alert.process or alert.host
    if alert.kind == "summary" or alert.processes:
        n = len(alert.processes) or alert.count
        what = f"{n} process{'es' if n != 1 else ''} {_TITLES.get(alert.kind, alert.kind)}"
        names = [split_name(p)[1] for p in alert.processes]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        text = f"[{alert.host}] {what}" + (f": {shown}" if shown else "")
    elif alert.kind == "crash_loop" and alert.details.get("note") == "removed":
        text = f"[{alert.host}] {target} was removed from supervisord while crash looping"
    elif alert.kind == "resolved":
        text = f"[{alert.host}] {target} {_resolved_words(alert)}"
    elif alert.kind == "crash_loop" and alert.details.get("note") == "stopped":
        text = f"[{alert.host}] {target} was stopped on purpose while crash looping"
    elif alert.kind == "crash_loop" and alert.details.get("reminder"):
        if alert.details.get("fatal"):
            text = (
                f"[{alert.host}] {target} is still FATAL: supervisord gave up ({alert.count} exits)"
            )
        else:
            text = f"[{alert.host}] {target} is still crash looping ({alert.count} exits)"
    elif alert.kind == "crash_loop" and alert.details.get("fatal"):
        text = f"[{alert.host}] {target} is crash looping and supervisord gave up (FATAL)"
    else:
        text = f"[{alert.host}] {target} {_TITLES.get(alert.kind, alert.kind)}"
        if alert.details.get("reason_text"):
            text += f": {alert.details['reason_text']}"
    return one_line(f"{prefix} {text}".strip())


def _resolved_words(alert: Alert) -> str:
    if alert.resolves == "crash_loop":
        lasted = alert.details.get("lasted")
        of = f" of {duration_words(float(lasted))}" if lasted is not None else ""
        return f"{_TITLES['resolved']} after a crash loop{of}"
    if alert.resolves == "fatal":
        return "is running again after FATAL"
    return f"{_TITLES['resolved']} ({alert.resolves or 'alert'})"


#: A summary names at most this many commands; its Processes list names the rest.
SUMMARY_STEPS = 5
#: Kinds whose next step is to read the process's output (and every item of a summary's).
_READ_OUTPUT = ("crash", "backoff", "log_pattern")
#: Kinds with nothing left to do: it got better, or a person did it.
_NOTHING_TO_DO = ("resolved", "action")


def _shell_name(process: str) -> str:
    """A process name as a command line takes it: cleaned, quoted when it needs quoting."""
    return shlex.quote(one_line(process))


def _tail_command(process: str, channel: str = "stderr") -> str:
    channel = channel if channel in ("stdout", "stderr") else "stderr"
    return f"supervisorctl tail -f {_shell_name(process)} {channel}"


def next_steps(alert: Alert) -> list[str]:
    """The lines saying what to do next, for the alerts whose producers do not say it in their
    message: a crash, a failed start, a log pattern (read its output), a FATAL found by a
    reconcile (start it after a fix), a summary (one command per process). The other kinds
    say it themselves (crash_loop, fatal, memmon's and health's, events_lost) or have nothing
    left to do (resolved, action)."""
    if alert.kind == "summary":
        items = alert.details.get("items")
        if isinstance(items, list):
            named = [
                f"{it.get('group')}:{it.get('name')}"
                for it in items
                if isinstance(it, dict)
                and it.get("group")
                and it.get("name")
                and it.get("kind") not in _NOTHING_TO_DO
            ]
        else:
            named = [p for p in alert.processes if split_name(p)[1]]
        named = list(dict.fromkeys(named))
        if not named:
            return []
        shown = [f"  {_tail_command(p)}" for p in named[:SUMMARY_STEPS]]
        if len(named) > SUMMARY_STEPS:
            others = len(named) - SUMMARY_STEPS
            shown.append(f"  (the same for the {others} other{'s' if others > 1 else ''} below)")
        return [f"See {'its' if len(named) == 1 else 'their'} output:", *shown]
    if not (alert.group and alert.name):
        return []
    if alert.kind in _READ_OUTPUT:
        channel = str(alert.details.get("channel") or "stderr")
        return [f"See its output: {_tail_command(alert.process, channel)}"]
    if alert.kind == "fatal" and "supervisorctl start" not in alert.message:
        return [f"Fix the cause, then: supervisorctl start {_shell_name(alert.process)}"]
    return []


def render_text(alert: Alert, prefix: str = "") -> tuple[str, str]:
    """(subject, plain-text body) for mail and chat."""
    when = iso_time(alert.time)
    lines = [
        f"Host: {one_line(alert.host)}",
        f"Time: {when}",
        f"Kind: {alert.kind}",
    ]
    if alert.process:
        lines.append(f"Process: {one_line(alert.process)}")
    if alert.exit_status is not None:
        lines.append(f"Exit status: {alert.exit_status}")
    if alert.details.get("reason_text"):
        lines.append(f"Cause: {one_line(str(alert.details['reason_text']))}")
    if alert.count > 1:
        lines.append(f"Count: {alert.count}")
    if alert.resolves:
        lines.append(f"Resolves: {alert.resolves}")
    if alert.message:
        lines += ["", clean_text(alert.message)]
    steps = next_steps(alert)
    if steps:
        lines += ["", *steps]
    if alert.processes:
        lines += ["", "Processes:"] + [f"  {one_line(p)}" for p in alert.processes]
    if alert.stderr_tail is not None:
        lines += ["", "Last lines of stderr:", clean_text(alert.stderr_tail) or "(empty)"]
    return subject(alert, prefix), "\n".join(lines) + "\n"


def file_record(alert: Alert) -> str:
    """One JSON line for the file sink: the machine fields, plus ``time_iso`` and ``text``
    (the subject and body a person would get by mail)."""
    body = json.loads(alert.to_json())
    subj, text = render_text(alert)
    body["time_iso"] = iso_time(alert.time)
    body["text"] = f"{subj}\n\n{text}"
    return json.dumps(body, sort_keys=True, ensure_ascii=False)
