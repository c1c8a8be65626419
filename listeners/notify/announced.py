"""Alerts for what other listeners announce on supervisord's bus (memmon, health, the page).

Pure: a decoded bus message in, the parts of an alert out, so crashmail only decides whether it
watches the process and records the alert.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

from listeners.core import bus
from listeners.core.names import full_name
from listeners.notify.alert import duration_words, mib

__all__ = ["Announced", "announced_alert"]


class Announced(NamedTuple):
    """What to alert on: kind, process (group may stand alone), a key tag and Alert fields."""

    kind: str
    group: str
    name: str
    tag: str
    fields: dict[str, Any]


def announced_alert(msg: bus.Message) -> Announced | None:
    """The alert a bus message asks for, or None when it is not alert-worthy."""
    if isinstance(msg, bus.MemoryRestart):
        verb = "would have restarted (dry run)" if msg.dry_run else "restarted"
        return Announced(
            "memory_restart",
            msg.group,
            msg.name,
            "memory",
            {
                "message": f"memmon {verb} it: {msg.measure} {mib(msg.measured_bytes)} over the"
                f" limit of {mib(msg.limit_bytes)} (rule {msg.rule}). If it keeps growing, look"
                " for a leak; if it needs more, raise its limit in memmon's rules.",
                "details": {
                    "measured_bytes": msg.measured_bytes,
                    "limit_bytes": msg.limit_bytes,
                    "rule": msg.rule,
                    "dry_run": msg.dry_run,
                    "pid": msg.pid,
                },
            },
        )
    if isinstance(msg, bus.ProcessHung) and msg.action != "grace":
        return Announced(
            "hung",
            msg.group,
            msg.name,
            "hung",
            {
                "message": _hung_text(msg),
                "details": {"reason": msg.reason, "action": msg.action, "pid": msg.pid},
            },
        )
    if isinstance(msg, bus.RestartsExhausted):
        return Announced(
            "restarts_exhausted",
            msg.group,
            msg.name,
            "exhausted",
            {
                "count": msg.restarts,
                "message": f"memmon restarted it {msg.restarts}"
                f" time{'' if msg.restarts == 1 else 's'} in"
                f" {duration_words(msg.window_seconds)} and stopped restarting it"
                f" ({mib(msg.measured_bytes)}, limit {mib(msg.limit_bytes)}). Restart it by hand"
                f" after fixing the leak: supervisorctl restart {msg.group}:{msg.name}",
            },
        )
    if isinstance(msg, bus.RestartsHeld):
        return Announced(
            "restarts_held",
            msg.group,
            "",
            "held",
            {"count": msg.over, "message": msg.describe(), "details": asdict(msg)},
        )
    if isinstance(msg, bus.ActionPerformed):
        return Announced(
            "action",
            msg.group,
            msg.name,
            "action",
            {
                "message": f"{msg.action} from the {msg.source} by {msg.user}",
                "details": {"action": msg.action, "user": msg.user, "source": msg.source},
            },
        )
    return None


#: What supervisor-health did, and what is left for a person to do, by ``ProcessHung.action``.
_HUNG_NEXT = {
    "restart": "supervisor-health restarted it. If it hangs again, look at what it waits on (its"
    " log, a stuck connection) before the next restart",
    "alert": "it is left running (the check is alert-only). Look at it, then: supervisorctl"
    " restart {process}",
    "exhausted": "supervisor-health has restarted it as often as allowed and leaves it as it is."
    " Fix the cause, then: supervisorctl restart {process}",
    "guarded": "the restart was held back: most of its group looks unhealthy at once, which is"
    " usually something they share (a database, a queue) rather than the workers. Check that"
    " first; supervisorctl restart {process} restarts it by hand",
}


def _hung_text(msg: bus.ProcessHung) -> str:
    what = {"probe": "failed its health check", "heartbeat": "stopped sending heartbeats"}.get(
        msg.reason, "went silent"
    )
    process = full_name(msg.group, msg.name)
    later = _HUNG_NEXT.get(msg.action, "action: {action}").format(
        process=process, action=msg.action
    )
    return f"{process} (pid {msg.pid}) {what}: {msg.detail}. {later}."
