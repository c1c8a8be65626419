"""Secrets out of text that goes to a log, an outbox row or an alert: URL credentials, and
everything after a URL's host (Slack and similar hooks carry their token in the path or the
query), also where a library writes a URL's path alone (``url: /services/T0/B0/token``)."""

from __future__ import annotations

import re

__all__ = ["redact"]

# userinfo of any URL (user:password@), and everything after the host of a URL
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_HTTP_TAIL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+)[/?#]\S*")
# a path named as a URL without its scheme and host (requests: "with url: /x"; urllib3: "url=/x")
_BARE_PATH = re.compile(r"(?P<head>\burl[:=] ?)/[^\s)'\"]*", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with URL credentials and paths, and every string in ``secrets``, hidden."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    text = _HTTP_TAIL.sub(lambda m: m.group("head") + "/***", text)
    return _BARE_PATH.sub(lambda m: m.group("head") + "/***", text)
