"""The supervisord event-listener protocol: the read/answer loop (events live in ``events``).

This is the only module that writes to stdout. Anything else that reaches stdout puts the
listener in supervisord's terminal UNKNOWN state, so ``run()`` moves the real stdout to a
private descriptor and points descriptor 1 at stderr before the first frame.

Protocol facts (checked against supervisor 4.3, see docs/internals.md):
- header ``ver:3.0 server:x serial:n pool:p poolserial:n eventname:NAME len:n``, then a payload
  whose ``len`` counts *characters* of a Python str, not bytes (supervisor#1243);
- the answer is ``RESULT <bytes>\\n<body>`` with no newline after the body;
- FAIL makes supervisord redeliver at once, so this loop never answers FAIL.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any, ClassVar

from listeners.core.events import (
    MAX_HEADER_CHARS,
    Event,
    GenericEvent,
    Header,
    PayloadError,
    ProcessCommunicationEvent,
    ProcessGroupEvent,
    ProcessLogEvent,
    ProcessStateEvent,
    ProtocolError,
    RemoteCommunicationEvent,
    SupervisorStateEvent,
    TickEvent,
    format_event,
    parse_event,
    parse_header,
    parse_tokens,
)
from listeners.core.log import get_logger

__all__ = [
    "Event",
    "GenericEvent",
    "Handler",
    "Header",
    "PayloadError",
    "ProcessCommunicationEvent",
    "ProcessGroupEvent",
    "ProcessLogEvent",
    "ProcessStateEvent",
    "ProtocolError",
    "RemoteCommunicationEvent",
    "SupervisorStateEvent",
    "TickEvent",
    "format_event",
    "parse_event",
    "parse_header",
    "parse_tokens",
    "run",
]

#: Seconds the rest of a payload may take once its header has arrived.
FRAME_TIMEOUT = 30.0
READY = "READY\n"
OK = "RESULT 2\nOK"
OK_READY = OK + READY
_FRAME_BYTES = {frame: frame.encode() for frame in (READY, OK, OK_READY)}

log = get_logger("listeners.protocol")
# --------------------------------------------------------------------------- streams


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the signal handler to leave a blocking read."""


class _StopMidFrame(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the signal handler while a frame is half read: exit without answering."""


class _Reader:
    """Reads header lines and character-counted payloads.

    On a real descriptor it decodes UTF-8 incrementally from ``os.read`` so that ``select`` can
    time out for the handler's timer and no bytes hide in a TextIOWrapper buffer. On a stream
    without a descriptor (``io.StringIO`` in tests) it reads text and cannot time out.
    """

    def __init__(self, stream: IO[str] | IO[bytes]) -> None:
        self._stream = stream
        # Unread text is self._buf[self._pos:]; consuming moves _pos instead of copying the rest.
        self._buf = ""
        self._pos = 0
        self._fd: int | None = None
        try:
            self._fd = stream.fileno()
        except (OSError, io.UnsupportedOperation, AttributeError):
            self._fd = None
        # supervisord writes str.encode('utf-8'); 'replace' keeps one char per bad byte.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def buffered(self) -> bool:
        return self._pos < len(self._buf)

    def pending(self, limit: int = 200) -> str:
        """The start of what was read but not consumed, for error messages."""
        return self._buf[self._pos : self._pos + limit]

    def _append(self, text: str) -> None:
        self._buf = self._buf[self._pos :] + text if self._pos else self._buf + text
        self._pos = 0

    def _fill(self, timeout: float | None, size: int = 4096) -> bool:
        """Read more input; False on timeout, EOFError at end of input.

        ``size`` is a small default because os.read allocates that much before it reads: a 64 KiB
        read of a 200-byte event cost more than the rest of the frame (bench/protocol.py).
        """
        if self._fd is None:
            chunk = self._stream.read(max(size, 65536))
            if isinstance(chunk, bytes):
                chunk = self._decoder.decode(chunk)
            if not chunk:
                raise EOFError
            self._append(chunk)
            return True
        if timeout is not None:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
            if not ready:
                return False
        data = os.read(self._fd, size)
        if not data:
            raise EOFError
        self._append(self._decoder.decode(data))
        return True

    def read_line(self, timeout: float | None, clock: Callable[[], float]) -> str | None:
        """One line without its newline, or None if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else clock() + timeout
        while (end := self._buf.find("\n", self._pos)) < 0:
            if len(self._buf) - self._pos > MAX_HEADER_CHARS:
                raise ProtocolError(f"no newline in {len(self._buf) - self._pos} characters")
            # Poll at least once even when the deadline has passed, so a handler whose timer
            # is always due cannot starve the events.
            remaining = None if deadline is None else max(0.0, deadline - clock())
            if not self._fill(remaining):
                return None
        line = self._buf[self._pos : end]
        self._pos = end + 1
        return line

    def read_chars(
        self, n: int, timeout: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> str:
        """``n`` characters; ProtocolError when they do not all arrive within ``timeout``.

        supervisord writes a payload right after its header, so one that stops arriving is a
        broken stream, never a slow writer.
        """
        deadline = None if timeout is None else clock() + timeout
        while (missing := n - (len(self._buf) - self._pos)) > 0:
            # each missing character is at least one byte: ask for all of them at once
            # (up to 1 MiB: os.read allocates what it is asked for before it reads)
            remaining = None if deadline is None else max(0.0, deadline - clock())
            if not self._fill(remaining, min(max(4096, missing), 1 << 20)):
                partial = (
                    " and ends inside a UTF-8 character" if self._decoder.getstate()[0] else ""
                )
                raise ProtocolError(f"payload stalled at {n - missing} of {n} characters{partial}")
        start = self._pos
        self._pos = start + n
        return self._buf[start : self._pos]


@contextlib.contextmanager
def _guarded_stdio() -> Iterator[tuple[IO[bytes], IO[str]]]:
    """Give the protocol a private copy of stdout and send descriptor 1 to stderr.

    After this, a stray print(), a library warning or a C extension writing to fd 1 lands in
    the listener's stderr log instead of corrupting the protocol stream.
    """
    # a closed descriptor 0 or 1 leaves sys.stdin / sys.stdout as None
    if sys.stdin is None or sys.stdout is None:
        raise OSError(errno.EBADF, "stdin or stdout is closed: run me as a supervisord listener")
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    saved = sys.stdout
    sys.stdout = sys.stderr
    out = open(private, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    try:
        yield sys.stdin.buffer, out
    finally:
        sys.stdout = saved
        with contextlib.suppress(OSError):
            out.close()


# --------------------------------------------------------------------------- the loop


class Handler:
    """What a listener plugs into ``run()``. Override ``handle``; the rest is optional.

    ``handle`` must not block on slow work (RPC restarts, SMTP, HTTP): supervisord drops the
    oldest buffered event when a pool's buffer is full. Hand such work to a thread.
    """

    #: Seconds between ``on_timer`` calls; None for no timer. Read once, when ``run`` starts.
    timer_interval: float | None = None

    def handle(self, event: Event) -> None:
        raise NotImplementedError

    def on_events_lost(self, count: int, event: Event) -> None:
        """``count`` events were dropped by supervisord before ``event`` (a poolserial gap)."""

    def on_timer(self) -> None:
        """Called every ``timer_interval`` seconds, also while events keep coming."""

    def close(self) -> None:
        """Called once when the loop ends, whatever the reason."""


@dataclass
class LoopStats:
    """Counters the loop keeps; listeners may export them."""

    events: int = 0
    bad_payloads: int = 0
    handler_errors: int = 0
    lost_events: int = 0
    gaps: int = 0


class _Loop:
    _signals: ClassVar[tuple[int, ...]] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(
        self,
        handler: Handler,
        reader: _Reader,
        out: IO[str],
        clock: Callable[[], float],
        stats: LoopStats,
        frame_timeout: float | None = FRAME_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.frame_timeout = frame_timeout
        self.reader = reader
        self.out = out
        self.clock = clock
        self.stats = stats
        self.busy = False
        self.in_payload = False
        self.stop_requested = False
        self.signal_name = ""
        self.last_poolserial: int | None = None
        # Frames go straight to the descriptor when there is one: no buffer to forget to flush.
        self._out_fd: int | None = None
        try:
            out.flush()
            self._out_fd = out.fileno()
        except (OSError, io.UnsupportedOperation, AttributeError):
            self._out_fd = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        self.signal_name = signal.Signals(signum).name
        if self.in_payload or (not self.busy and self.reader.buffered):
            # a half-read frame cannot be answered: leave it unacknowledged, supervisord
            # redelivers it to the next listener process
            raise _StopMidFrame
        log.info("protocol.stop_requested", signal=self.signal_name)
        if not self.busy:
            raise _Stop

    def _write(self, text: str) -> None:
        if self._out_fd is not None:
            data = _FRAME_BYTES.get(text) or text.encode()
            while data:  # a pipe may take less than all of it
                data = data[os.write(self._out_fd, data) :]
            return
        self.out.write(text)
        self.out.flush()

    def _timer(self) -> None:
        try:
            self.handler.on_timer()
        except Exception:
            self.stats.handler_errors += 1
            log.exception("protocol.timer_failed")

    def _track_poolserial(self, event: Event) -> None:
        ps = event.header.poolserial
        last = self.last_poolserial
        self.last_poolserial = ps
        # A smaller poolserial means supervisord restarted (counters start again at 0) or
        # redelivered after our restart; neither is a loss.
        if last is None or ps <= last + 1:
            return
        lost = ps - last - 1
        self.stats.lost_events += lost
        self.stats.gaps += 1
        log.warning(
            "protocol.events_lost",
            lost=lost,
            after_poolserial=last,
            poolserial=ps,
            pool=event.header.pool,
            hint="supervisord's event buffer overflowed; raise buffer_size in the listener conf",
        )
        try:
            self.handler.on_events_lost(lost, event)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("protocol.lost_handler_failed", serial=event.serial)

    def _dispatch(self, header: Header, payload: str) -> None:
        self.stats.events += 1
        try:
            event = parse_event(header, payload)
        except PayloadError as exc:
            self.stats.bad_payloads += 1
            log.error(
                "protocol.bad_payload",
                serial=header.serial,
                eventname=header.eventname,
                error=str(exc),
                payload=payload[:200],
            )
            event = Event(header=header, payload=payload)
            self._track_poolserial(event)
            return
        self._track_poolserial(event)
        try:
            self.handler.handle(event)
        except Exception:
            self.stats.handler_errors += 1
            log.exception(
                "protocol.handler_failed", serial=header.serial, eventname=header.eventname
            )

    def run(self) -> int:
        interval = self.handler.timer_interval
        next_timer = None if interval is None else self.clock() + interval
        self._write(READY)
        while True:
            if self.stop_requested:
                return 0
            timeout = None if next_timer is None else max(0.0, next_timer - self.clock())
            try:
                line = self.reader.read_line(timeout, self.clock)
            except EOFError:
                if self.reader.buffered:
                    log.error("protocol.truncated_header", raw=repr(self.reader.pending()))
                    return 1
                log.info("protocol.stdin_closed")
                return 0
            if line is None:
                if self.stop_requested:
                    return 0
                self.busy = True
                self._timer()
                self.busy = False
                next_timer = self.clock() + (interval or 0.0)
                continue
            self.busy = True
            try:
                header = parse_header(line)
            except ProtocolError as exc:
                log.error("protocol.bad_header", error=str(exc), raw=repr(line[:200]))
                return 1
            self.in_payload = True
            try:
                payload = self.reader.read_chars(header.length, self.frame_timeout, self.clock)
            except EOFError:
                log.error(
                    "protocol.truncated_payload", serial=header.serial, expected=header.length
                )
                return 1
            finally:
                self.in_payload = False
            self._dispatch(header, payload)
            if self.stop_requested:
                self._write(OK)
                return 0
            if next_timer is not None and self.clock() >= next_timer:
                self._timer()
                next_timer = self.clock() + (interval or 0.0)
            # still busy while writing: a SIGTERM now must not cut the answer in half
            self._write(OK_READY)
            self.busy = False
            if self.stop_requested:
                return 0


def run(
    handler: Handler,
    stdin: IO[str] | IO[bytes] | None = None,
    stdout: IO[str] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    stats: LoopStats | None = None,
    install_signals: bool = True,
    frame_timeout: float | None = FRAME_TIMEOUT,
) -> int:
    """Serve events to ``handler`` until stdin closes or a signal asks us to stop.

    Returns the exit code: 0 for a clean stop, 1 when the stream was lost (supervisord then
    restarts the listener and redelivers the event it was handling). With no streams given,
    uses the process's stdin and a guarded stdout. A payload that stops arriving for
    ``frame_timeout`` seconds is a lost stream.
    """
    loop_stats = stats if stats is not None else LoopStats()
    with contextlib.ExitStack() as stack:
        if stdin is None or stdout is None:
            try:
                real_in, real_out = stack.enter_context(_guarded_stdio())
            except OSError as exc:
                log.error("protocol.stream_failed", error=str(exc))
                return 1
            stdin = real_in if stdin is None else stdin
            stdout = real_out if stdout is None else stdout
        loop = _Loop(handler, _Reader(stdin), stdout, clock, loop_stats, frame_timeout)
        previous: dict[int, Any] = {}
        if install_signals:
            for signum in _Loop._signals:
                previous[signum] = signal.signal(signum, loop._on_signal)
        try:
            return loop.run()
        except _Stop:
            return 0
        except _StopMidFrame:
            log.error(
                "protocol.stopped_mid_frame",
                signal=loop.signal_name,
                hint="the half-read event is not acknowledged; supervisord redelivers it",
            )
            return 1
        except ProtocolError as exc:
            log.error("protocol.stream_lost", error=str(exc))
            return 1
        except OSError as exc:
            # stdout closed (EPIPE) or stdin unreadable: nothing more can be answered
            log.error("protocol.stream_failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
            try:
                handler.close()
            except Exception:
                log.exception("protocol.close_failed")
