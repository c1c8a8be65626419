"""Escaping of untrusted text (process names, stderr) for each medium a sink writes."""

from __future__ import annotations

import html as _html

from listeners.notify.alert import clean_text, one_line

__all__ = ["header", "html", "slack"]


def html(text: str) -> str:
    """Text for an HTML body: markup characters and quotes escaped, controls removed."""
    return _html.escape(clean_text(text), quote=True)


def slack(text: str) -> str:
    """Text for Slack mrkdwn: only &, < and > are special (Slack's own rule)."""
    return clean_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header(text: str, limit: int = 200) -> str:
    """Text for a mail header: one line, no CR/LF (no header injection), bounded."""
    return one_line(text, limit)
