"""Logging set-up shared by every listener: structlog, to stderr only.

stdout belongs to the supervisord protocol (see protocol.py), so nothing here may touch it.
JSON lines when stderr is not a terminal (supervisord's log files, journald), a readable
console format when a person runs a command by hand.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

__all__ = ["configure", "get_logger"]

_configured = False
_lock = threading.Lock()


class _StderrLogger:
    """Writes each rendered line to a stream looked up at write time (sys.stderr by default).

    Binding sys.stderr once would keep a stream that can be swapped out and closed later (by a
    test runner, or by a library that replaces it); a closed stream must never crash a listener.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        out = self._stream if self._stream is not None else sys.stderr
        with _lock:
            try:
                out.write(message + "\n")
                out.flush()
            except (ValueError, OSError):
                pass

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg
    failure = msg


class _CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """A stdlib handler that, like _StderrLogger, writes to whatever sys.stderr is now."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _factory(stream: TextIO | None) -> Any:
    def make(*_args: Any) -> _StderrLogger:
        return _StderrLogger(stream)

    return make


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr by default)."""
    global _configured  # noqa: PLW0603 - logging is process-wide by nature
    out = stream if stream is not None else sys.stderr
    as_json = (not out.isatty()) if json is None else json
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_factory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the stdlib (urllib3, asyncio) must not reach stdout either.
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    logging.basicConfig(handlers=[handler], level=max(numeric, logging.WARNING), force=True)
    _configured = True


def get_logger(name: str) -> Any:
    """A structlog logger; configures stderr logging on first use if nobody did."""
    if not _configured:
        configure()
    return structlog.get_logger(name)
