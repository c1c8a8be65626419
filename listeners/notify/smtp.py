"""SMTP sink: plain, STARTTLS or implicit TLS (SMTPS), optional auth, several recipients."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate

from listeners.notify.alert import Alert, render_text
from listeners.notify.escape import header
from listeners.notify.sinks import SinkError

__all__ = ["TLS_MODES", "SmtpSink", "build_message"]

TLS_MODES = ("none", "starttls", "ssl")


def build_message(
    alert: Alert, sender: str, to: list[str], subject_prefix: str = ""
) -> EmailMessage:
    """The mail for one alert; Message-ID comes from the alert key so duplicates are visible."""
    subj, body = render_text(alert, subject_prefix)
    msg = EmailMessage()
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
        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, alert: Alert) -> None:
        msg = build_message(alert, self.sender, self.to, self.subject_prefix)
        try:
            client: smtplib.SMTP
            if self.tls == "ssl":
                client = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self._context()
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.tls == "starttls":
                    client.starttls(context=self._context())
                if self.username:
                    client.login(self.username, self.password or "")
                # Refused recipients raise only when all are refused; retrying a partial
                # success would mail the others twice.
                client.send_message(msg, from_addr=self.sender, to_addrs=self.to)
        except smtplib.SMTPAuthenticationError as exc:
            raise SinkError(
                f"SMTP server {self.host}:{self.port} refused the login of {self.username}"
                f" ({exc.smtp_code})"
            ) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"cannot send mail via {self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from None
