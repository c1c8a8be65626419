"""Messages the listeners exchange over supervisord's REMOTE_COMMUNICATION events.

memmon publishes with ``supervisor.sendRemoteCommEvent(MEMMON_TYPE, encode(msg))``; crashmail
and the exporter receive the event and ``decode`` it. This module is the one definition of
that JSON schema (version 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "ACTIONS_TYPE",
    "HEALTH_TYPE",
    "MEMMON_TYPE",
    "CRASHMAIL_TYPE",
    "ActionPerformed",
    "Backoff",
    "DeliveryHealth",
    "HealthStatus",
    "ProcessHung",
    "MemoryLimits",
    "MemoryRestart",
    "Message",
    "OutboxTrouble",
    "ProcessesUnreadable",
    "RestartsHeld",
    "RestartsExhausted",
    "decode",
    "encode",
    "hint_for",
]

MEMMON_TYPE = "listeners.memmon"
#: The health listener's messages (ProcessHung, Backoff, HealthStatus) use this type.
HEALTH_TYPE = "listeners.health"
#: The event type of actions taken by hand (the exporter's status page).
ACTIONS_TYPE = "listeners.actions"
#: crashmail's announcements (delivery health); the same schema, another sender.
CRASHMAIL_TYPE = "listeners.crashmail"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MemoryLimits:
    """memmon's limits in bytes by ``group:name``; sent at start, when processes change and
    once a minute (so an exporter started later learns them). ``exhausted`` names the
    processes memmon has given up restarting (None from a memmon that does not say)."""

    host: str
    limits: dict[str, int]
    measure: str = "rss"
    cumulative: bool = False
    exhausted: list[str] | None = None


@dataclass(frozen=True)
class MemoryRestart:
    """memmon restarted (or, with ``dry_run``, would have restarted) a process."""

    host: str
    group: str
    name: str
    pid: int
    measured_bytes: int
    limit_bytes: int
    rule: str
    measure: str = "rss"
    dry_run: bool = False


@dataclass(frozen=True)
class RestartsExhausted:
    """memmon stopped restarting a process after ``restarts`` restarts in ``window_seconds``."""

    host: str
    group: str
    name: str
    restarts: int
    window_seconds: float
    measured_bytes: int
    limit_bytes: int


@dataclass(frozen=True)
class OutboxTrouble:
    """crashmail's outbox cannot be written (``failing``) or can again; ``spooled`` incidents
    wait in memory, ``dropped`` were lost because that spool was full. Sent on each change."""

    host: str
    failing: bool
    error: str
    spooled: int
    dropped: int = 0


@dataclass(frozen=True)
class DeliveryHealth:
    """crashmail's deliveries by sink name: pending now, and failed attempts since the outbox
    was made (a counter); sent when they change and once a minute."""

    host: str
    pending: dict[str, int]
    failures: dict[str, int]


@dataclass(frozen=True)
class ActionPerformed:
    """Someone acted on a process by hand: ``action`` (restart, stop, start, enable, disable)
    of ``group:name`` by ``user`` from ``source`` (e.g. "status page")."""

    host: str
    group: str
    name: str
    action: str
    user: str
    source: str = "status page"


@dataclass(frozen=True)
class ProcessHung:
    """health judged a process hung or unhealthy (a failed probe, no heartbeat, silence).

    ``reason`` is probe, heartbeat or silence; ``action`` what health did: restart, alert
    (alert-only programs), grace, exhausted (max restarts reached) or guarded (mass guard).
    """

    host: str
    group: str
    name: str
    pid: int
    reason: str
    detail: str
    action: str


@dataclass(frozen=True)
class Backoff:
    """health holds a crash-looping (or FATAL) process: the next start is ``delay_seconds`` away.

    ``next_start`` is a unix time; ``failures`` the consecutive failures the delay is for.
    """

    host: str
    group: str
    name: str
    failures: int
    delay_seconds: float
    next_start: float
    state: str = "EXITED"


@dataclass(frozen=True)
class HealthStatus:
    """health's view per ``group:name``, sent after each round that changed something.

    The exporter turns it into ``supervisord_process_probe_success`` (1/0),
    ``supervisord_process_heartbeat_age_seconds`` and ``supervisord_process_backoff_seconds``.
    """

    host: str
    probe_success: dict[str, int]
    heartbeat_age: dict[str, float]
    backoff_seconds: dict[str, float]


@dataclass(frozen=True)
class RestartsHeld:
    """memmon held every restart of ``group``: ``over`` of ``judged`` processes were over their
    limit at once (median ``median_bytes``), which says the measure or the ceiling is wrong."""

    host: str
    group: str
    over: int
    judged: int
    median_bytes: int
    limit_bytes: int
    measure: str = "rss"
    at_start: bool = False

    def describe(self) -> str:
        """'32 of 32 php_mail over 16.0MiB rss (median 18.1MiB): nothing restarted; ...'."""
        return (
            f"{self.over} of {self.judged} {self.group} over {_mib(self.limit_bytes)}"
            f" {self.measure} (median {_mib(self.median_bytes)}): nothing restarted;"
            f" {hint_for(self.measure)}"
        )


def hint_for(measure: str) -> str:
    """What to try when most processes are over a ceiling at once."""
    if measure == "rss":
        return "the measure or the ceiling looks wrong - try --measure pss"
    return "the ceiling looks wrong for this workload - raise it or check the workers"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


@dataclass(frozen=True)
class ProcessesUnreadable:
    """memmon cannot read the memory of these processes (``reason`` denied): they are not
    judged. ``processes`` lists ``group:name``; sent when the set changes (empty: all read)."""

    host: str
    processes: list[str]
    reason: str = "denied"


Message = (
    MemoryLimits
    | MemoryRestart
    | RestartsExhausted
    | RestartsHeld
    | ProcessesUnreadable
    | ProcessHung
    | Backoff
    | HealthStatus
    | ActionPerformed
    | DeliveryHealth
    | OutboxTrouble
)
_KINDS: dict[str, type[Message]] = {
    "memory_limits": MemoryLimits,
    "memory_restart": MemoryRestart,
    "restarts_exhausted": RestartsExhausted,
    "process_hung": ProcessHung,
    "backoff": Backoff,
    "health_status": HealthStatus,
    "restarts_held": RestartsHeld,
    "processes_unreadable": ProcessesUnreadable,
    "action_performed": ActionPerformed,
    "delivery_health": DeliveryHealth,
    "outbox_trouble": OutboxTrouble,
}
_INTEGERS = (
    "pid",
    "measured_bytes",
    "limit_bytes",
    "restarts",
    "over",
    "judged",
    "median_bytes",
    "failures",
    "spooled",
    "dropped",
)
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def encode(message: Message) -> str:
    """JSON text for ``sendRemoteCommEvent``; one line, ASCII only."""
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": _KIND_OF[type(message)]}
    body.update(asdict(message))
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> Message:
    """Parse a bus message; raises ValueError saying what is wrong with it."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bus message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("bus message is not a JSON object")  # noqa: TRY004 - bad input, not a bug
    if body.get("v") != SCHEMA_VERSION:
        raise ValueError(f"bus message has schema version {body.get('v')!r}, expected 1")
    cls = _KINDS.get(str(body.get("kind")))
    if cls is None:
        raise ValueError(f"bus message has unknown kind {body.get('kind')!r}")
    names = {f.name: f.type for f in fields(cls)}
    missing = [n for n in names if n not in body and _required(cls, n)]
    if missing:
        raise ValueError(f"bus message {body['kind']} lacks {', '.join(missing)}")
    kwargs = {n: body[n] for n in names if n in body}
    _check_fields(cls, kwargs)
    return cls(**kwargs)


def _check_fields(cls: type[Message], kwargs: dict[str, Any]) -> None:
    """Each field has the JSON type its message declares; raises ValueError naming it."""
    for key in _INTEGERS if cls is not DeliveryHealth else ():
        if key in kwargs and not _count(kwargs[key]):
            raise ValueError(f"bus message field {key} must be a whole number from 0 to 2^63")
    for key in ("action", "user", "source", "group", "name"):
        if cls is ActionPerformed and key in kwargs and not isinstance(kwargs[key], str):
            raise ValueError(f"bus message field {key} must be a string")
    if "failing" in kwargs and not isinstance(kwargs["failing"], bool):
        raise ValueError("bus message field failing must be true or false")
    if cls is DeliveryHealth:
        for key in ("pending", "failures"):
            value = kwargs.get(key)
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and _count(v) for k, v in value.items()
            ):
                raise ValueError(f"bus message field {key} must map names to counts")
    if "limits" in kwargs:
        limits = kwargs["limits"]
        if not isinstance(limits, dict) or not all(
            isinstance(k, str) and _count(v) for k, v in limits.items()
        ):
            raise ValueError("bus message field limits must map names to byte counts")
    _check_numbers(kwargs)
    if "processes" in kwargs and not (
        isinstance(kwargs["processes"], list)
        and all(isinstance(p, str) for p in kwargs["processes"])
    ):
        raise ValueError("bus message field processes must be a list of names")


def _check_numbers(kwargs: dict[str, Any]) -> None:
    for key in ("delay_seconds", "next_start"):
        if key in kwargs and not _number(kwargs[key]):
            raise ValueError(f"bus message field {key} must be a number")
    for key in ("probe_success", "heartbeat_age", "backoff_seconds"):
        if key in kwargs and not (
            isinstance(kwargs[key], dict)
            and all(isinstance(k, str) and _number(v) for k, v in kwargs[key].items())
        ):
            raise ValueError(f"bus message field {key} must map names to numbers")


def _number(value: object) -> bool:
    """A JSON number that Prometheus can read: not a bool, not inf or NaN (``1e400``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return math.isfinite(value)


def _count(value: object) -> bool:
    """A count, size or pid: a whole number from 0 below 2^63 (``true`` is no count: JSON's
    booleans are ints to Python, and the exporter printed ``True`` into /metrics)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _required(cls: type, name: str) -> bool:
    from dataclasses import MISSING

    return next(f for f in fields(cls) if f.name == name).default is MISSING
