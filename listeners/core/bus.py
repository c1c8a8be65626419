"""Messages the listeners exchange over supervisord's REMOTE_COMMUNICATION events.

memmon publishes with ``supervisor.sendRemoteCommEvent(MEMMON_TYPE, encode(msg))``; crashmail
and the exporter receive the event and ``decode`` it. crashmail publishes ``OutboxTrouble``
under CRASHMAIL_TYPE when its outbox stops (or starts again) taking writes. This module is the
one definition of that JSON schema (version 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "CRASHMAIL_TYPE",
    "MEMMON_TYPE",
    "MemoryLimits",
    "MemoryRestart",
    "Message",
    "OutboxTrouble",
    "RestartsExhausted",
    "decode",
    "encode",
]

MEMMON_TYPE = "listeners.memmon"
CRASHMAIL_TYPE = "listeners.crashmail"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MemoryLimits:
    """memmon's limits in bytes by ``group:name``; sent at start and when processes change."""

    host: str
    limits: dict[str, int]
    measure: str = "rss"
    cumulative: bool = False


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


Message = MemoryLimits | MemoryRestart | RestartsExhausted | OutboxTrouble
_KINDS: dict[
    str,
    type[MemoryLimits] | type[MemoryRestart] | type[RestartsExhausted] | type[OutboxTrouble],
] = {
    "memory_limits": MemoryLimits,
    "memory_restart": MemoryRestart,
    "restarts_exhausted": RestartsExhausted,
    "outbox_trouble": OutboxTrouble,
}
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
    for key in ("pid", "measured_bytes", "limit_bytes", "restarts", "spooled", "dropped"):
        if key in kwargs and (not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool)):
            raise ValueError(f"bus message field {key} must be an integer")
    if "failing" in kwargs and not isinstance(kwargs["failing"], bool):
        raise ValueError("bus message field failing must be true or false")
    if "limits" in kwargs:
        limits = kwargs["limits"]
        if not isinstance(limits, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in limits.items()
        ):
            raise ValueError("bus message field limits must map names to integers")
    return cls(**kwargs)


def _required(cls: type, name: str) -> bool:
    from dataclasses import MISSING

    return next(f for f in fields(cls) if f.name == name).default is MISSING
