"""The supervisord event-listener protocol: typed events and the read/answer loop.

This is the only module that writes to stdout. Anything else that reaches stdout puts the
listener in supervisord's terminal UNKNOWN state, so ``run()`` moves the real stdout to a
private descriptor and points descriptor 1 at stderr before the first frame.

Protocol facts (checked against supervisor 4.3, see shared/SUPERVISOR_FACTS.md):
- header ``ver:3.0 server:x serial:n pool:p poolserial:n eventname:NAME len:n``, then a payload
  whose ``len`` counts *characters* of a Python str, not bytes (supervisor#1243);
- the answer is ``RESULT <bytes>\\n<body>`` with no newline after the body;
- FAIL makes supervisord redeliver at once, so this loop never answers FAIL.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, ClassVar, NamedTuple

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

READY = "READY\n"
OK = "RESULT 2\nOK"
OK_READY = OK + READY
_FRAME_BYTES = {frame: frame.encode() for frame in (READY, OK, OK_READY)}
# A header is ~150 characters; anything this long is a desynchronised stream, not a header.
MAX_HEADER_CHARS = 8192
HEADER_KEYS = ("ver", "server", "serial", "pool", "poolserial", "eventname", "len")

log = get_logger("listeners.protocol")


class ProtocolError(Exception):
    """The stream cannot be parsed any more: the listener must exit and be restarted."""


class PayloadError(ValueError):
    """One event's payload is malformed: log it, acknowledge it, carry on."""


# --------------------------------------------------------------------------- parsing


def parse_tokens(text: str) -> dict[str, str]:
    """Parse space-separated ``key:value`` tokens; a value may itself contain ':'."""
    # supervisord joins tokens with single ASCII spaces; split on exactly that so that other
    # whitespace (a no-break space in a process name) stays inside its token.
    try:
        fields = dict(token.split(":", 1) for token in text.split(" ") if token)
    except ValueError:
        fields = None
    if fields is None or "" in fields or "\n" in text:
        return _parse_tokens_slowly(text)
    return fields


def _parse_tokens_slowly(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for token in text.replace("\n", " ").split(" "):
        if not token:
            continue
        key, sep, value = token.partition(":")
        if not sep or not key:
            raise PayloadError(f"token {token[:80]!r} is not of the form key:value")
        fields[key] = value
    return fields


class Header(NamedTuple):
    """The header line that precedes every event (a tuple: the cheapest immutable record)."""

    ver: str
    server: str
    serial: int
    pool: str
    poolserial: int
    eventname: str
    length: int


_HEADER_RE = re.compile(
    r"ver:(\S*) server:(\S*) serial:(\d+) pool:(\S*) poolserial:(\d+) eventname:(\S*) len:(\d+)"
)


def parse_header(line: str) -> Header:
    """Parse a header line; raises ProtocolError when it is not one."""
    match = _HEADER_RE.fullmatch(line)
    if match is not None:  # the order supervisord writes; anything else takes the long way
        ver, server, serial, pool, poolserial, eventname, length = match.groups()
        return Header(ver, server, int(serial), pool, int(poolserial), eventname, int(length))
    try:
        fields = parse_tokens(line)
    except PayloadError as exc:
        raise ProtocolError(f"unparsable header line: {exc}") from None
    missing = [key for key in HEADER_KEYS if key not in fields]
    if missing:
        raise ProtocolError(f"header line lacks {', '.join(missing)}")
    try:
        serial, poolserial, length = (int(fields[k]) for k in ("serial", "poolserial", "len"))
    except ValueError:
        raise ProtocolError("header line has a non-numeric serial, poolserial or len") from None
    if length < 0 or serial < 0 or poolserial < 0:
        raise ProtocolError("header line has a negative serial, poolserial or len")
    return Header(
        ver=fields["ver"],
        server=fields["server"],
        serial=serial,
        pool=fields["pool"],
        poolserial=poolserial,
        eventname=fields["eventname"],
        length=length,
    )


@dataclass(slots=True, kw_only=True)
class Event:
    """Any event; the subclasses below add the fields of each type."""

    header: Header
    payload: str

    @property
    def name(self) -> str:
        return self.header.eventname

    @property
    def serial(self) -> int:
        return self.header.serial


@dataclass(slots=True, kw_only=True)
class _ProcessEvent(Event):
    processname: str
    groupname: str

    @property
    def full_name(self) -> str:
        """The ``group:name`` form that XML-RPC calls take."""
        return f"{self.groupname}:{self.processname}"


@dataclass(slots=True, kw_only=True)
class ProcessStateEvent(_ProcessEvent):
    """PROCESS_STATE_<STATE>: ``state`` is the new state, ``from_state`` the old one."""

    state: str
    from_state: str
    pid: int | None = None
    expected: bool | None = None
    tries: int | None = None


@dataclass(slots=True, kw_only=True)
class TickEvent(Event):
    """TICK_5 / TICK_60 / TICK_3600: ``when`` is the start of the period (unix time)."""

    period: int
    when: int


@dataclass(slots=True, kw_only=True)
class ProcessGroupEvent(Event):
    """PROCESS_GROUP_ADDED / PROCESS_GROUP_REMOVED."""

    groupname: str
    added: bool


@dataclass(slots=True, kw_only=True)
class ProcessLogEvent(_ProcessEvent):
    """PROCESS_LOG_STDOUT / STDERR: ``data`` may end in the middle of a UTF-8 sequence."""

    pid: int
    channel: str
    data: str


@dataclass(slots=True, kw_only=True)
class ProcessCommunicationEvent(_ProcessEvent):
    """PROCESS_COMMUNICATION_STDOUT / STDERR: text a child framed in <!--XSUPERVISOR...-->."""

    pid: int
    data: str


@dataclass(slots=True, kw_only=True)
class RemoteCommunicationEvent(Event):
    """REMOTE_COMMUNICATION, sent with XML-RPC ``supervisor.sendRemoteCommEvent(type, data)``."""

    type: str
    data: str


@dataclass(slots=True, kw_only=True)
class SupervisorStateEvent(Event):
    """SUPERVISOR_STATE_CHANGE_RUNNING / STOPPING (empty payload)."""

    state: str


@dataclass(slots=True, kw_only=True)
class GenericEvent(Event):
    """An event type this module has no class for; ``fields`` holds what could be parsed."""

    fields: dict[str, str] = field(default_factory=dict)


def _int(fields: dict[str, str], key: str, name: str) -> int:
    try:
        return int(fields[key])
    except KeyError:
        raise PayloadError(f"{name} payload lacks {key}") from None
    except ValueError:
        raise PayloadError(
            f"{name} payload has a non-numeric {key}: {fields[key][:40]!r}"
        ) from None


def _str(fields: dict[str, str], key: str, name: str) -> str:
    try:
        return fields[key]
    except KeyError:
        raise PayloadError(f"{name} payload lacks {key}") from None


_LOG_RE = re.compile(r"processname:(\S+) groupname:(\S+) pid:(\d+) channel:(\S+)")
_STATE_RE = re.compile(
    r"processname:(?P<processname>\S+) groupname:(?P<groupname>\S+) from_state:(?P<from_state>\S+)"
    r"(?: expected:(?P<expected>[01]))?(?: pid:(?P<pid>\d+))?(?: tries:(?P<tries>\d+))?"
)


def _split_data(payload: str) -> tuple[dict[str, str], str]:
    head, _, data = payload.partition("\n")
    return parse_tokens(head), data


def parse_event(header: Header, payload: str) -> Event:
    """Turn a header and its payload into a typed event; raises PayloadError."""
    name = header.eventname
    # the most frequent event where output events are on, so tested first, with a fast path
    # for the exact layout supervisord writes
    if name.startswith("PROCESS_LOG_"):
        head, _, data = payload.partition("\n")
        m = _LOG_RE.fullmatch(head)
        if m is not None:
            return ProcessLogEvent(
                header=header,
                payload=payload,
                processname=m[1],
                groupname=m[2],
                pid=int(m[3]),
                channel=m[4],
                data=data,
            )
        f, data = _split_data(payload)
        return ProcessLogEvent(
            header=header,
            payload=payload,
            processname=_str(f, "processname", name),
            groupname=_str(f, "groupname", name),
            pid=_int(f, "pid", name),
            channel=f.get("channel", name.removeprefix("PROCESS_LOG_").lower()),
            data=data,
        )
    if name.startswith("PROCESS_STATE_"):
        m = _STATE_RE.fullmatch(payload)
        if m is not None:
            pid, expected, tries = m["pid"], m["expected"], m["tries"]
            return ProcessStateEvent(
                header=header,
                payload=payload,
                state=name[14:],
                processname=m["processname"],
                groupname=m["groupname"],
                from_state=m["from_state"],
                pid=None if pid is None else int(pid),
                expected=None if expected is None else expected == "1",
                tries=None if tries is None else int(tries),
            )
        f = parse_tokens(payload)
        return ProcessStateEvent(
            header=header,
            payload=payload,
            state=name.removeprefix("PROCESS_STATE_"),
            processname=_str(f, "processname", name),
            groupname=_str(f, "groupname", name),
            from_state=f.get("from_state", ""),
            pid=_int(f, "pid", name) if "pid" in f else None,
            expected=bool(_int(f, "expected", name)) if "expected" in f else None,
            tries=_int(f, "tries", name) if "tries" in f else None,
        )
    if name.startswith("TICK_"):
        period = name.removeprefix("TICK_")
        if not period.isdigit():
            raise PayloadError(f"{name} is not a TICK_<seconds> event")
        return TickEvent(
            header=header,
            payload=payload,
            period=int(period),
            when=_int(parse_tokens(payload), "when", name),
        )
    if name in ("PROCESS_GROUP_ADDED", "PROCESS_GROUP_REMOVED"):
        f = parse_tokens(payload)
        return ProcessGroupEvent(
            header=header,
            payload=payload,
            groupname=_str(f, "groupname", name),
            added=name.endswith("ADDED"),
        )
    if name.startswith("PROCESS_COMMUNICATION_"):
        f, data = _split_data(payload)
        return ProcessCommunicationEvent(
            header=header,
            payload=payload,
            processname=_str(f, "processname", name),
            groupname=_str(f, "groupname", name),
            pid=_int(f, "pid", name),
            data=data,
        )
    if name == "REMOTE_COMMUNICATION":
        f, data = _split_data(payload)
        return RemoteCommunicationEvent(
            header=header, payload=payload, type=_str(f, "type", name), data=data
        )
    if name.startswith("SUPERVISOR_STATE_CHANGE_"):
        return SupervisorStateEvent(
            header=header, payload=payload, state=name.removeprefix("SUPERVISOR_STATE_CHANGE_")
        )
    try:
        fields = parse_tokens(payload.partition("\n")[0])
    except PayloadError:
        fields = {}
    return GenericEvent(header=header, payload=payload, fields=fields)


def format_event(
    eventname: str,
    payload: str,
    *,
    serial: int = 1,
    poolserial: int | None = None,
    pool: str = "listener",
    server: str = "supervisor",
) -> str:
    """Write one event the way supervisord does (``len`` in characters); for tests and benches."""
    ps = serial if poolserial is None else poolserial
    return (
        f"ver:3.0 server:{server} serial:{serial} pool:{pool} poolserial:{ps} "
        f"eventname:{eventname} len:{len(payload)}\n{payload}"
    )


# --------------------------------------------------------------------------- streams


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the signal handler to leave a blocking read."""


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

    def read_chars(self, n: int) -> str:
        while (missing := n - (len(self._buf) - self._pos)) > 0:
            # each missing character is at least one byte: ask for all of them at once
            self._fill(None, max(4096, missing))
        start = self._pos
        self._pos = start + n
        return self._buf[start : self._pos]


@contextlib.contextmanager
def _guarded_stdio() -> Iterator[tuple[IO[bytes], IO[str]]]:
    """Give the protocol a private copy of stdout and send descriptor 1 to stderr.

    After this, a stray print(), a library warning or a C extension writing to fd 1 lands in
    the listener's stderr log instead of corrupting the protocol stream.
    """
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
    ) -> None:
        self.handler = handler
        self.reader = reader
        self.out = out
        self.clock = clock
        self.stats = stats
        self.busy = False
        self.stop_requested = False
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
        log.info("protocol.stop_requested", signal=signal.Signals(signum).name)
        if not self.busy and not self.reader.buffered:
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
            try:
                payload = self.reader.read_chars(header.length)
            except EOFError:
                log.error(
                    "protocol.truncated_payload", serial=header.serial, expected=header.length
                )
                return 1
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
) -> int:
    """Serve events to ``handler`` until stdin closes or a signal asks us to stop.

    Returns the exit code: 0 for a clean stop, 1 when the stream was lost (supervisord then
    restarts the listener and redelivers the event it was handling). With no streams given,
    uses the process's stdin and a guarded stdout.
    """
    loop_stats = stats if stats is not None else LoopStats()
    with contextlib.ExitStack() as stack:
        if stdin is None or stdout is None:
            real_in, real_out = stack.enter_context(_guarded_stdio())
            stdin = real_in if stdin is None else stdin
            stdout = real_out if stdout is None else stdout
        loop = _Loop(handler, _Reader(stdin), stdout, clock, loop_stats)
        previous: dict[int, Any] = {}
        if install_signals:
            for signum in _Loop._signals:
                previous[signum] = signal.signal(signum, loop._on_signal)
        try:
            return loop.run()
        except _Stop:
            return 0
        except ProtocolError as exc:
            log.error("protocol.stream_lost", error=str(exc))
            return 1
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
            try:
                handler.close()
            except Exception:
                log.exception("protocol.close_failed")
