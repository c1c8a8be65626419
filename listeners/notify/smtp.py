"""SMTP sink: plain, STARTTLS or implicit TLS (SMTPS), optional auth, several recipients."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as _default_policy
from email.utils import formatdate
from types import ModuleType
from typing import TYPE_CHECKING

from listeners.notify.alert import Alert, render_text
from listeners.notify.escape import header
from listeners.notify.sinks import SinkError

if TYPE_CHECKING:
    import smtplib
    import ssl

__all__ = ["TLS_MODES", "SmtpSink", "build_message"]

TLS_MODES = ("none", "starttls", "ssl")


def _smtplib(tls: bool) -> ModuleType:
    """smtplib, loaded with OpenSSL only when a sink uses TLS.

    smtplib imports ssl when it can (about 4 MiB of PSS for OpenSSL); a plain sink
    (``tls=none``, a local relay) has no use for it, so it is hidden while smtplib loads.
    A TLS sink imports ssl first, and reloads an smtplib that was loaded without it.
    """
    if tls:
        import ssl  # noqa: F401 - before smtplib, so that starttls and SMTP_SSL exist

        module = importlib.import_module("smtplib")
        if not getattr(module, "_have_ssl", True):
            module = importlib.reload(module)
        return module
    if "smtplib" in sys.modules or "ssl" in sys.modules:
        return importlib.import_module("smtplib")
    # hmac (smtplib's AUTH CRAM-MD5) would load OpenSSL's digests too: its builtin fallback
    hidden = [name for name in ("ssl", "_hashlib") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("smtplib")
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


_POLICY = _default_policy.clone(max_line_length=998)


def build_message(
    alert: Alert, sender: str, to: list[str], subject_prefix: str = ""
) -> EmailMessage:
    """The mail for one alert; Message-ID comes from the alert key so duplicates are visible."""
    subj, body = render_text(alert, subject_prefix)
    # 998 is RFC 5322's line limit: at 78 the email package folds a 70-78 character subject
    # right after "Subject:", and some readers then show it with a leading space
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = header(sender)
    msg["To"] = ", ".join(header(a) for a in to)
    msg["Subject"] = header(subj, 900)
    msg["Date"] = formatdate(alert.time, localtime=False)
    msg["Message-ID"] = f"<{alert.key}@supervisor-listeners>"
    msg["X-Supervisor-Alert-Key"] = alert.key
    msg["X-Supervisor-Alert-Kind"] = alert.kind
    msg.set_content(body)
    return msg


@dataclass
class SmtpSink:
    """Sends each alert as one mail. The password is given here, read by the caller from an
    environment variable or a file, never from a flag."""

    host: str
    port: int
    sender: str
    to: list[str]
    tls: str = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    subject_prefix: str = ""
    timeout: float = 30.0
    name: str = "smtp"
    verify: bool = True
    #: Most seconds one attempt may take in all (None: the courier's default).
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"invalid TLS mode {self.tls!r}: expected one of {TLS_MODES}")
        if not self.to:
            raise ValueError("an smtp sink needs at least one recipient (to=)")

    def _context(self) -> ssl.SSLContext:
        import ssl

        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, alert: Alert) -> None:
        msg = build_message(alert, self.sender, self.to, self.subject_prefix)
        lib = _smtplib(self.tls != "none")
        try:
            client: smtplib.SMTP
            if self.tls == "ssl":
                client = lib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self._context()
                )
            else:
                client = lib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.tls == "starttls":
                    client.starttls(context=self._context())
                if self.username:
                    client.login(self.username, self.password or "")
                # Refused recipients raise only when all are refused; retrying a partial
                # success would mail the others twice.
                client.send_message(msg, from_addr=self.sender, to_addrs=self.to)
        except lib.SMTPAuthenticationError as exc:
            raise SinkError(
                f"SMTP server {self.host}:{self.port} refused the login of {self.username}"
                f" ({exc.smtp_code})"
            ) from None
        except (lib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise SinkError(
                f"cannot send mail via {self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from None
