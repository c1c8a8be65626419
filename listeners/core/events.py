"""Typed supervisord events and the parsers that make them from header lines and payloads.

Facts (checked against supervisor 4.3, see docs/internals.md): a header is
``ver:3.0 server:x serial:n pool:p poolserial:n eventname:NAME len:n`` and ``len`` counts
*characters* of a Python str, not bytes (supervisor#1243). Nothing here reads or writes a stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from listeners.core.names import full_name

__all__ = [
    "Event",
    "GenericEvent",
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
]

# A header is ~150 characters; anything this long is a desynchronised stream, not a header.
MAX_HEADER_CHARS = 8192
# Far above what supervisord sends (PROCESS_LOG data is capped by capture_maxbytes, 128 KiB in
# practice): a bigger len is a broken stream, and reading it would exhaust memory first.
MAX_PAYLOAD_CHARS = 64 * 1024 * 1024
# Serials, lengths and pids fit in 19 digits; Python's int() refuses over 4,300 with ValueError.
MAX_DIGITS = 19
HEADER_KEYS = ("ver", "server", "serial", "pool", "poolserial", "eventname", "len")


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
    r"ver:(\S*) server:(\S*) serial:([0-9]{1,19}) pool:(\S*) poolserial:([0-9]{1,19})"
    r" eventname:(\S*) len:([0-9]{1,19})"
)


def _header_int(fields: dict[str, str], key: str) -> int:
    value = fields[key]
    if not (value.isascii() and value.isdigit()):
        raise ProtocolError(f"header line has a non-numeric {key}: {value[:40]!r}")
    if len(value) > MAX_DIGITS:
        raise ProtocolError(f"header line has a {len(value)}-digit {key}")
    return int(value)


def _checked(header: Header) -> Header:
    if header.length > MAX_PAYLOAD_CHARS:
        raise ProtocolError(
            f"header line has len:{header.length}, beyond any event supervisord sends"
            f" (at most {MAX_PAYLOAD_CHARS})"
        )
    return header


def parse_header(line: str) -> Header:
    """Parse a header line; raises ProtocolError when it is not one."""
    match = _HEADER_RE.fullmatch(line)
    if match is not None:  # the order supervisord writes; anything else takes the long way
        ver, server, serial, pool, poolserial, eventname, length = match.groups()
        return _checked(
            Header(ver, server, int(serial), pool, int(poolserial), eventname, int(length))
        )
    try:
        fields = parse_tokens(line)
    except PayloadError as exc:
        raise ProtocolError(f"unparsable header line: {exc}") from None
    missing = [key for key in HEADER_KEYS if key not in fields]
    if missing:
        raise ProtocolError(f"header line lacks {', '.join(missing)}")
    serial, poolserial, length = (_header_int(fields, k) for k in ("serial", "poolserial", "len"))
    return _checked(
        Header(
            ver=fields["ver"],
            server=fields["server"],
            serial=serial,
            pool=fields["pool"],
            poolserial=poolserial,
            eventname=fields["eventname"],
            length=length,
        )
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
        return full_name(self.groupname, self.processname)


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
        value = fields[key]
    except KeyError:
        raise PayloadError(f"{name} payload lacks {key}") from None
    digits = value[1:] if value[:1] == "-" else value
    if not (digits.isascii() and digits.isdigit()):
        raise PayloadError(f"{name} payload has a non-numeric {key}: {value[:40]!r}")
    if len(digits) > MAX_DIGITS:
        raise PayloadError(f"{name} payload has a {len(digits)}-digit {key}")
    return int(value)


def _str(fields: dict[str, str], key: str, name: str) -> str:
    try:
        return fields[key]
    except KeyError:
        raise PayloadError(f"{name} payload lacks {key}") from None


_LOG_RE = re.compile(r"processname:(\S+) groupname:(\S+) pid:([0-9]{1,19}) channel:(\S+)")
_STATE_RE = re.compile(
    r"processname:(?P<processname>\S+) groupname:(?P<groupname>\S+) from_state:(?P<from_state>\S+)"
    r"(?: expected:(?P<expected>[01]))?(?: pid:(?P<pid>[0-9]{1,19}))?"
    r"(?: tries:(?P<tries>[0-9]{1,19}))?"
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
        if not (period.isascii() and period.isdigit() and len(period) <= MAX_DIGITS):
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
