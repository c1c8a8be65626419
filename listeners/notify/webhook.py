"""Webhook sink: a generic JSON body, or Slack-compatible ``{"text": ...}``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from listeners.core.log import route_stdlib
from listeners.notify.alert import Alert, clean_alert, render_text
from listeners.notify.escape import slack
from listeners.notify.sinks import SinkError, http_status_error, tls_hint

route_stdlib()  # requests and urllib3 log through the stdlib: to stderr, never stdout

__all__ = ["FORMATS", "WebhookSink", "generic_body", "slack_body"]

FORMATS = ("json", "slack")


def generic_body(alert: Alert, subject_prefix: str = "") -> dict[str, Any]:
    """The alert's fields plus a rendered subject and text (JSON escapes everything itself)."""
    subj, text = render_text(alert, subject_prefix)
    body: dict[str, Any] = json.loads(clean_alert(alert).to_json())
    body.update(subject=subj, text=text, source="crashmail")
    return body


def slack_body(alert: Alert, subject_prefix: str = "") -> dict[str, Any]:
    """Slack (and Mattermost, Rocket.Chat) incoming-webhook text; mrkdwn-escaped."""
    subj, text = render_text(alert, subject_prefix)
    # A ``` inside the text would close the code block early.
    block = slack(text).replace("```", "`\u200b``")
    return {"text": f"*{slack(subj)}*\n```{block}```"}


@dataclass
class WebhookSink:
    url: str
    format: str = "json"
    timeout: float = 10.0
    subject_prefix: str = ""
    name: str = "webhook"
    #: Most seconds one attempt may take in all (None: the courier's default).
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"invalid webhook format {self.format!r}: expected json or slack")

    def body(self, alert: Alert) -> dict[str, Any]:
        if self.format == "slack":
            return slack_body(alert, self.subject_prefix)
        return generic_body(alert, self.subject_prefix)

    def send(self, alert: Alert) -> None:
        try:
            # No redirects (a 301/302 would turn the POST into a GET without the alert) and
            # no body read: what the receiver says is in its status line.
            resp = requests.post(
                self.url,
                json=self.body(alert),
                timeout=self.timeout,
                headers={"X-Supervisor-Alert-Key": alert.key},
                allow_redirects=False,
                stream=True,
            )
        except requests.RequestException as exc:
            # The URL may hold a secret token (Slack): name the sink, not the URL.
            raise SinkError(
                f"webhook {self.name} unreachable: {type(exc).__name__}{tls_hint(exc)}"
            ) from None
        with resp:
            if resp.status_code >= 300:
                raise http_status_error(
                    f"webhook {self.name}", resp.status_code, resp.reason or "", resp.headers
                )
