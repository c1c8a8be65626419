"""Logging shared by every listener: structured lines, to stderr only.

stdout belongs to the supervisord protocol (see protocol.py), so nothing here may touch it.
JSON lines when stderr is not a terminal (supervisord's log files, journald), a readable
console format when a person runs a command by hand. Each call names an event and its fields:
``log.warning("memmon.decision", process="g:a", measured=17_000_000)`` gives
``{"process": "g:a", "measured": 17000000, "event": "memmon.decision", "level": "warning",
"timestamp": "2026-...Z"}``.

This is a small module of its own rather than structlog: structlog imports asyncio, which
cost every listener about 8 MiB of PSS (docs/benchmarks.md), for features none of them uses.
The stdlib's ``logging`` (about 0.8 MiB) is imported only when something that logs through it
is loaded: ``route_stdlib()`` is called by the modules that bring such a library in (requests
for the webhook and Alertmanager sinks), and by ``configure()`` when it is loaded already.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from listeners.core.redact import redact

__all__ = ["Logger", "RateLimitedLog", "configure", "get_logger", "route_stdlib"]

_lock = threading.Lock()
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _Settings:
    configured = False
    level = 20  # info
    stream: TextIO | None = None  # None: whatever sys.stderr is at write time
    as_json = True


_settings = _Settings()


def _fallback(value: object) -> str:
    return repr(value)


def _render(event: str, level: str, fields: dict[str, Any]) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    if _settings.as_json:
        record = {**fields, "event": event, "level": level, "timestamp": now}
        return json.dumps(record, default=_fallback, ensure_ascii=False)
    exception = fields.pop("exception", None)
    pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
    line = f"{now} [{level:<9}] {event:<30} {pairs}".rstrip()
    return f"{line}\n{exception}".rstrip() if exception else line


def _write(line: str) -> None:
    """Write one line to the stream of now: a stream swapped out and closed must not crash us."""
    out = _settings.stream if _settings.stream is not None else sys.stderr
    with _lock:
        try:
            out.write(line + "\n")
            out.flush()
        except (ValueError, OSError, AttributeError):
            pass


class Logger:
    """One named logger: ``debug``, ``info``, ``warning``, ``error``, ``exception``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: str, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if _LEVELS[level] < _settings.level:
            return
        if fields.pop("exc_info", False) or exc:
            fields["exception"] = traceback.format_exc().rstrip()
        _write(_render(event, level, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    warn = warning

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the traceback of the exception being handled."""
        self._log("error", event, fields, exc=True)


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Send every listener's log lines, and stdlib logging's, to ``stream`` (stderr by default)."""
    out = stream if stream is not None else sys.stderr
    try:
        tty = out.isatty()
    except (ValueError, AttributeError):
        tty = False
    _settings.as_json = (not tty) if json is None else json
    _settings.level = _LEVELS.get(level.lower(), 20)
    _settings.stream = stream
    _settings.configured = True
    if "logging" in sys.modules:
        route_stdlib()


def route_stdlib() -> None:
    """Send the stdlib's logging (urllib3, http.client) to our stream, never to stdout: stdout
    belongs to the supervisord protocol. Call it after importing a library that logs."""
    import logging

    class CurrentStderr(logging.StreamHandler[TextIO]):
        """A stdlib handler that writes to whatever sys.stderr is now."""

        @property
        def stream(self) -> TextIO:
            return sys.stderr

        @stream.setter
        def stream(self, _value: TextIO) -> None:
            pass

    class OurLines(logging.Formatter):
        """A stdlib record as one of our lines: its logger as the event, its message with
        secrets hidden (urllib3 names the whole URL, a webhook's token with it), and an
        exception as its type and message, never a traceback across many lines."""

        def format(self, record: logging.LogRecord) -> str:
            fields: dict[str, Any] = {"message": redact(record.getMessage())}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error"] = redact(f"{type(exc).__name__}: {exc}")
            level = record.levelname.lower()
            return _render(f"stdlib.{record.name}", level if level in _LEVELS else "info", fields)

    stream = _settings.stream
    handler = logging.StreamHandler(stream) if stream is not None else CurrentStderr()
    handler.setFormatter(OurLines())
    level = max(_settings.level, logging.WARNING)
    logging.basicConfig(handlers=[handler], level=level, force=True)


def get_logger(name: str) -> Logger:
    """A logger; stderr logging is configured on first use if nobody did."""
    if not _settings.configured:
        configure()
    return Logger(name)


class RateLimitedLog:
    """One warning per ``interval`` seconds for a repeated event, with how many were skipped."""

    def __init__(
        self,
        event: str,
        emit: Callable[..., Any],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.interval = interval
        self.clock = clock
        self.emit = emit
        self.suppressed = 0
        self._next = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, **fields: Any) -> None:
        with self._lock:
            now = self.clock()
            if now < self._next:
                self.suppressed += 1
                return
            self._next = now + self.interval
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            fields["suppressed"] = suppressed
        self.emit(self.event, **fields)
