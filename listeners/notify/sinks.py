"""Sinks that need nothing but the standard library: a JSON-lines file and sendmail."""

from __future__ import annotations

import os
import shlex
import subprocess
from email.message import EmailMessage
from typing import Protocol

from listeners.core.cli import DEFAULT_SENDMAIL
from listeners.notify.alert import Alert, file_record, one_line, render_text

__all__ = ["FileSink", "SendmailSink", "Sink", "SinkError"]


class SinkError(Exception):
    """Delivery failed; the outbox retries later. The message says why."""


class Sink(Protocol):
    #: A stable name, used as part of the outbox's per-sink delivery record.
    name: str

    def send(self, alert: Alert) -> None: ...


class FileSink:
    """Appends one JSON object per alert to a file (the default sink)."""

    def __init__(self, path: str, name: str = "file") -> None:
        self.path = path
        self.name = name

    def send(self, alert: Alert) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (file_record(alert) + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkError(f"cannot append to {self.path}: {exc.strerror}") from None


class SendmailSink:
    """Pipes a mail to a sendmail-compatible program, as superlance does (``-t -i``)."""

    def __init__(
        self,
        to: list[str],
        program: str = DEFAULT_SENDMAIL,
        sender: str | None = None,
        subject_prefix: str = "",
        timeout: float = 30.0,
        name: str = "sendmail",
    ) -> None:
        self.to = to
        self.argv = shlex.split(program)
        self.sender = sender
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self.name = name

    def message(self, alert: Alert) -> EmailMessage:
        subj, body = render_text(alert, self.subject_prefix)
        msg = EmailMessage()
        msg["To"] = ", ".join(one_line(a) for a in self.to)
        if self.sender:
            msg["From"] = one_line(self.sender)
        msg["Subject"] = subj
        msg["X-Supervisor-Alert-Key"] = alert.key
        msg.set_content(body)
        return msg

    def send(self, alert: Alert) -> None:
        data = self.message(alert).as_bytes()
        try:
            proc = subprocess.run(
                self.argv, input=data, capture_output=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SinkError(f"cannot run {self.argv[0]}: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[:200]
            raise SinkError(f"{self.argv[0]} exited {proc.returncode}: {err}")
