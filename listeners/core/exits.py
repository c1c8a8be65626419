"""Why a process exited, in words a person acts on: PHP memory_limit, a fatal error, a signal...

Pure functions over what supervisord and the process leave behind: the exit status (``-1`` when
a signal ended it, supervisord's ``decode_wait_status``), the signal name from supervisord's log
(``terminated by SIGKILL``), the last lines of stderr and, where the host tells, whether the
kernel's OOM killer fired (the ``oom_kill`` counter of /proc/vmstat or of the memory cgroup's
memory.events). The reasons are a small fixed set so that they can be metric labels.
"""

from __future__ import annotations

import re
import signal as _signal
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "OOM_SOURCES",
    "REASONS",
    "ExitReason",
    "OomWatch",
    "classify",
    "exit_from_log",
    "format_bytes",
    "oom_paths",
    "parse_oom_kills",
    "read_oom_kills",
    "signal_name",
]

#: Every reason ``classify`` can give, in the order it tries them.
REASONS = (
    "memmon",
    "expected",
    "oom_kill",
    "signal",
    "php_memory_limit",
    "uncaught_exception",
    "php_fatal",
    "exit_status",
)

#: Where the kernel counts OOM kills: the host's counter, and the cgroup v2 root's (a container).
OOM_SOURCES = ("/proc/vmstat", "/sys/fs/cgroup/memory.events")

# What the text of a reason may carry from stderr (untrusted): bounded, one line.
_DETAIL_LIMIT = 160

_PHP_MEMORY = re.compile(
    r"(?:PHP )?Fatal error: +Allowed memory size of (\d+) bytes exhausted(?: \(tried to allocate"
    r" (\d+) bytes\))?"
)
_PHP_UNCAUGHT = re.compile(r"(?:PHP )?Fatal error: +Uncaught (.*?)(?: in .+:\d+)?$")
_PHP_FATAL = re.compile(r"(?:PHP )?Fatal error: +(.*?)(?: in .+ on line \d+)?$")
_PY_TRACEBACK = "Traceback (most recent call last):"

_SIGNAL_WHAT = {
    "SIGSEGV": "segmentation fault",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "arithmetic error",
    "SIGILL": "illegal instruction",
    "SIGTERM": "terminated",
    "SIGINT": "interrupted",
    "SIGHUP": "hung up",
    "SIGPIPE": "broken pipe",
}


@dataclass(frozen=True, slots=True)
class ExitReason:
    """``reason`` is one of REASONS (a label); ``text`` says it to a person."""

    reason: str
    text: str
    signal: str | None = None


# supervisord's own log line for every exit (process.py finish()); the only place the status of
# an autorestarted process survives, since spawn() resets exitstatus before anyone can ask, and
# a start that fails before startsecs never sets exitstatus at all (getProcessInfo says 0).
_EXIT_LINE = re.compile(
    r"exited: (?P<name>\S+) \((?P<how>exit status (?P<code>\d+)|terminated by"
    r" (?P<sig>\w+))"
)


_SPAWN_LINE = re.compile(r"spawned: '(?P<name>[^']*)' with pid (?P<pid>\d+)")


def _exit_of(m: re.Match[str]) -> tuple[int | None, str]:
    code = m.group("code")
    return (int(code) if code is not None else None, m.group("how"))


def exit_from_log(text: str, name: str, pid: int | None = None) -> tuple[int | None, str]:
    """(exit status or None, how) of a process from supervisord's log.

    ``name`` is the process name without its group, as supervisord writes it. Without ``pid``
    the last ``exited: NAME (...)`` line answers. With ``pid`` the answer is that process's
    own exit: the first ``exited: NAME`` after its ``spawned: 'NAME' with pid PID`` line, and
    only when no other process of that name was running then (supervisord's lines carry no
    group: two programs with ``process_name=worker`` write the same name). ``(None, "")``
    when that cannot be told: an unknown status beats another process's.
    """
    if pid:
        return _exit_of_pid(text, name, pid)
    found: tuple[int | None, str] = (None, "")
    for m in _EXIT_LINE.finditer(text):
        if m.group("name") == name:
            found = _exit_of(m)
    return found


def _exit_of_pid(text: str, name: str, pid: int) -> tuple[int | None, str]:
    events = [
        (m.start(), "spawn", m) for m in _SPAWN_LINE.finditer(text) if m.group("name") == name
    ] + [(m.start(), "exit", m) for m in _EXIT_LINE.finditer(text) if m.group("name") == name]
    events.sort(key=lambda e: e[0])
    ours = max((i for i, (_, kind, m) in enumerate(events) if kind == "spawn"
                and int(m.group("pid")) == pid), default=None)  # fmt: skip
    if ours is None:
        return (None, "")
    # others of the name still running when ours started (an exit seen without its spawn,
    # from before the log's window, counts for nothing)
    others = 0
    for _, kind, _m in events[:ours]:
        others = others + 1 if kind == "spawn" else max(0, others - 1)
    for _, kind, m in events[ours + 1 :]:
        if kind == "spawn":
            others += 1
            continue
        return _exit_of(m) if others == 0 else (None, "")
    return (None, "")


def format_bytes(n: int) -> str:
    """``16 MiB``, ``1.5 GiB``, ``900 KiB``: PHP users write memory_limit in these units."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def signal_name(value: str | int | None) -> str | None:
    """``SIGKILL`` from 9, ``"9"``, ``"KILL"`` or ``"SIGKILL"``; None when it names no signal."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text.isdigit():
        try:
            return _signal.Signals(int(text)).name
        except ValueError:
            return None
    if not text:
        return None
    name = text if text.startswith("SIG") else f"SIG{text}"
    return name if name.isalnum() and len(name) <= 12 else None


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return (
        flat
        if len(flat) <= _DETAIL_LIMIT
        else flat[: _DETAIL_LIMIT - 1] + "\N{HORIZONTAL ELLIPSIS}"
    )


def _python_exception(lines: list[str]) -> str | None:
    """The ``ValueError: boom`` line that ends the last Python traceback, if any."""
    start = None
    for i, line in enumerate(lines):
        if line.strip() == _PY_TRACEBACK:
            start = i
    if start is None:
        return None
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            return line.strip()
    return ""


def _from_stderr(tail: str) -> ExitReason | None:
    """A reason the last lines of stderr give; the last one written wins."""
    lines = tail.splitlines()[-200:]
    text = "\n".join(lines)
    memory = list(_PHP_MEMORY.finditer(text))
    php_at = max((i for i, ln in enumerate(lines) if "Fatal error:" in ln), default=-1)
    py_at = max((i for i, ln in enumerate(lines) if ln.strip() == _PY_TRACEBACK), default=-1)
    if php_at < 0 and py_at < 0:
        return None
    if py_at > php_at:
        exc = _python_exception(lines)
        what = f": {_short(exc)}" if exc else ""
        return ExitReason("uncaught_exception", f"uncaught Python exception{what}")
    last = lines[php_at]
    if memory and memory[-1].group(0) in last:
        limit = int(memory[-1].group(1))
        return ExitReason(
            "php_memory_limit", f"ran out of PHP memory (memory_limit {format_bytes(limit)})"
        )
    uncaught = _PHP_UNCAUGHT.search(last)
    if uncaught:
        return ExitReason("uncaught_exception", f"uncaught PHP exception: {_short(uncaught[1])}")
    fatal = _PHP_FATAL.search(last)
    detail = _short(fatal[1]) if fatal else ""
    return ExitReason("php_fatal", "PHP fatal error" + (f": {detail}" if detail else ""))


def classify(
    exit_status: int | None,
    *,
    signal: str | int | None = None,
    stderr_tail: str | None = None,
    expected: bool = False,
    oom_kill: bool = False,
    memmon: bool = False,
) -> ExitReason:
    """The reason for one exit. Unknown stays ``exit status N``.

    ``exit_status`` is supervisord's (``-1`` for a signal, None when it is lost), ``signal`` the
    name its log gives, ``oom_kill`` whether the OOM counter moved just before this exit.
    """
    if memmon:
        return ExitReason("memmon", "restarted by memmon (over its memory ceiling)")
    if expected:
        status = "" if exit_status is None else f" (exit status {exit_status})"
        return ExitReason("expected", f"exited on purpose{status}")
    sig = signal_name(signal)
    if sig == "SIGKILL" and oom_kill:
        return ExitReason("oom_kill", "killed by the kernel's OOM killer (SIGKILL)", sig)
    if sig is not None:
        what = _SIGNAL_WHAT.get(sig)
        return ExitReason("signal", f"killed by {sig}" + (f" ({what})" if what else ""), sig)
    found = _from_stderr(stderr_tail) if stderr_tail else None
    if found is not None:
        return found
    if exit_status is None:
        return ExitReason("exit_status", "exit status unknown")
    if exit_status < 0:
        if oom_kill:
            return ExitReason("oom_kill", "killed by the kernel's OOM killer")
        return ExitReason("signal", "killed by a signal")
    return ExitReason("exit_status", f"exit status {exit_status}")


# --------------------------------------------------------------------------- the OOM counter


def parse_oom_kills(text: str) -> int | None:
    """The ``oom_kill N`` line of /proc/vmstat or memory.events; None when there is none."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value.strip())
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _own_cgroup_events(read: Callable[[str], str | None]) -> str | None:
    """memory.events of the cgroup v2 this process runs in (supervisord's children share it)."""
    text = read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::/") and line.strip() != "0::/":
            return f"/sys/fs/cgroup{line[3:].strip()}/memory.events"
    return None


def oom_paths(read: Callable[[str], str | None] = _read) -> tuple[str, ...]:
    """The counters to read on this host: OOM_SOURCES and this process's own cgroup's."""
    own = _own_cgroup_events(read)
    return (*OOM_SOURCES, own) if own else OOM_SOURCES


def read_oom_kills(
    paths: Iterable[str] | None = None, read: Callable[[str], str | None] = _read
) -> int | None:
    """The sum of every readable OOM counter; None when the host tells none (then: unknown)."""
    if paths is None:
        paths = oom_paths(read)
    counts = [
        n for p in paths if (t := read(p)) is not None and (n := parse_oom_kills(t)) is not None
    ]
    return sum(counts) if counts else None


class OomWatch:
    """Did the OOM counter move within the last ``window`` seconds? Sampled by the caller."""

    def __init__(self, read: Callable[[], int | None] = read_oom_kills, window: float = 10.0):
        self.read = read
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float) -> int | None:
        count = self.read()
        if count is not None:
            self._samples.append((now, count))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        return count

    def fired(self, now: float) -> bool | None:
        """True when a kill was counted since the oldest sample in the window; None: unknown."""
        before = self._samples[0][1] if self._samples else None
        count = self.sample(now)
        if count is None or before is None:
            return None
        return count > before
