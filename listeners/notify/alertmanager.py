"""Alertmanager sink: POST to API v2 ``/api/v2/alerts``; a resolved alert carries ``endsAt``.

Labels are alertname, group, name, host, kind, severity and source="crashmail". The alertnames
match the shipped Prometheus rules (SupervisorProcessCrashLoop, SupervisorProcessFatal with
labels host, group, name) so Alertmanager deduplicates the two paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

from listeners.core.log import route_stdlib
from listeners.notify.alert import Alert, clean_text, render_text
from listeners.notify.sinks import SinkError, http_status_error, tls_hint

route_stdlib()  # requests and urllib3 log through the stdlib: to stderr, never stdout

__all__ = ["ALERTNAMES", "AlertmanagerSink", "am_alerts"]

ALERTNAMES = {
    "crash": "SupervisorProcessCrash",
    "crash_loop": "SupervisorProcessCrashLoop",
    "fatal": "SupervisorProcessFatal",
    "backoff": "SupervisorProcessBackoff",
    "memory_restart": "SupervisorMemoryRestart",
    "restarts_exhausted": "SupervisorMemoryRestartsExhausted",
    "events_lost": "SupervisorEventsLost",
    "log_pattern": "SupervisorProcessLogPattern",
    "hung": "SupervisorProcessHung",
    "restarts_held": "SupervisorMemoryRestartsHeld",
    "action": "SupervisorProcessAction",
}
SEVERITY = {
    "crash_loop": "critical",
    "fatal": "critical",
    "restarts_exhausted": "critical",
}
#: Kinds that describe a lasting state, resolved explicitly by crashmail.
STATE_KINDS = ("crash_loop", "fatal", "restarts_exhausted")


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _one(
    kind: str,
    host: str,
    group: str,
    name: str,
    *,
    starts: float,
    ends: float | None,
    summary: str,
    description: str,
) -> dict[str, Any]:
    labels = {
        "alertname": ALERTNAMES.get(kind, "SupervisorAlert"),
        "host": host,
        "group": group,
        "name": name,
        "kind": kind,
        "severity": SEVERITY.get(kind, "warning"),
        "source": "crashmail",
    }
    item: dict[str, Any] = {
        "labels": {k: clean_text(v) for k, v in labels.items()},
        "annotations": {"summary": clean_text(summary), "description": clean_text(description)},
        "startsAt": _rfc3339(starts),
    }
    if ends is not None:
        item["endsAt"] = _rfc3339(ends)
    return item


def am_alerts(
    alert: Alert, *, now: float, hold: float = 3600.0, state_hold: float = 7 * 86400.0
) -> list[dict[str, Any]]:
    """Alertmanager alerts for one of ours; a summary becomes one alert per folded item."""
    subj, text = render_text(alert)
    if alert.kind == "summary":
        out = []
        for item in alert.details.get("items", []):
            kind = str(item.get("kind", "crash"))
            group, name = str(item.get("group", "")), str(item.get("name", ""))
            t = float(item.get("time", alert.time))
            if kind == "resolved":
                resolves = str(item.get("resolves") or "crash_loop")
                out.append(
                    _one(
                        resolves,
                        alert.host,
                        group,
                        name,
                        starts=t,
                        ends=now,
                        summary=f"{group}:{name} is stable again",
                        description=text,
                    )
                )
                continue
            ends = t + (state_hold if kind in STATE_KINDS else hold)
            out.append(
                _one(
                    kind,
                    alert.host,
                    group,
                    name,
                    starts=t,
                    ends=ends,
                    summary=f"{group}:{name} {kind} x{item.get('count', 1)}",
                    description=text,
                )
            )
        return out
    if alert.kind == "resolved":
        kind = alert.resolves or "crash_loop"
        started = float(alert.details.get("started", alert.time))
        return [
            _one(
                kind,
                alert.host,
                alert.group,
                alert.name,
                starts=started,
                ends=now,
                summary=subj,
                description=text,
            )
        ]
    ends = alert.time + (state_hold if alert.kind in STATE_KINDS else hold)
    return [
        _one(
            alert.kind,
            alert.host,
            alert.group,
            alert.name,
            starts=alert.time,
            ends=ends,
            summary=subj,
            description=text,
        )
    ]


@dataclass
class AlertmanagerSink:
    url: str
    timeout: float = 10.0
    hold: float = 3600.0
    state_hold: float = 7 * 86400.0
    name: str = "alertmanager"
    #: Most seconds one attempt may take in all (None: the courier's default).
    deadline: float | None = None

    def send(self, alert: Alert) -> None:
        body = am_alerts(alert, now=time.time(), hold=self.hold, state_hold=self.state_hold)
        if not body:
            return
        endpoint = self.url.rstrip("/") + "/api/v2/alerts"
        try:
            resp = requests.post(
                endpoint, json=body, timeout=self.timeout, allow_redirects=False, stream=True
            )
        except requests.RequestException as exc:
            raise SinkError(
                f"alertmanager {self.name} unreachable: {type(exc).__name__}{tls_hint(exc)}"
            ) from None
        with resp:
            if resp.status_code >= 300:
                # at most 512 bytes of its answer: a wrong URL may name a large download
                detail = resp.raw.read(512, decode_content=True) or b""
                raise http_status_error(
                    f"alertmanager {self.name}",
                    resp.status_code,
                    resp.reason or "",
                    resp.headers,
                    detail.decode("utf-8", "replace")[:200],
                )
