"""Sinks that need nothing but the standard library: a JSON-lines file and sendmail."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Protocol

from listeners.core import child
from listeners.core.cli import DEFAULT_SENDMAIL
from listeners.core.redact import redact
from listeners.notify.alert import Alert, clean_alert, file_record, one_line, render_text

__all__ = [
    "RETRY_AFTER_CAP",
    "FileSink",
    "SendmailSink",
    "Sink",
    "SinkError",
    "http_status_error",
    "parse_retry_after",
    "redact",
    "tls_hint",
]

#: The longest ``Retry-After`` honoured (seconds): a receiver asking for more is retried after
#: an hour anyway, so a typo on its side cannot silence alerts for days.
RETRY_AFTER_CAP = 3600.0


class SinkError(Exception):
    """Delivery failed; the outbox retries later. The message says why.

    ``retry_after``: the receiver asked for that many seconds of quiet (HTTP ``Retry-After``).
    ``permanent``: retrying cannot help (HTTP 4xx other than 408/429): the delivery is given up.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date), capped at
    RETRY_AFTER_CAP; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when.timestamp() - now()), RETRY_AFTER_CAP)


def tls_hint(exc: BaseException) -> str:
    """What to do about a certificate the HTTP sinks did not trust; "" for other errors. The
    exception's own text is not shown: it carries the URL's path, where tokens live."""
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return ""
    return (
        ": certificate verify failed (for a private CA, point REQUESTS_CA_BUNDLE at its"
        " certificate: the HTTP sinks trust certifi's bundle, not SSL_CERT_FILE)"
    )


def http_status_error(
    what: str, status: int, reason: str, headers: Mapping[str, str], detail: str = ""
) -> SinkError:
    """The SinkError for a non-2xx answer: permanent for 4xx but 408/429, Retry-After kept."""
    suffix = f": {one_line(detail, 200)}" if detail.strip() else ""
    retry_after = parse_retry_after(headers.get("Retry-After")) if status in (429, 503) else None
    if 300 <= status < 400:
        return SinkError(
            f"{what} answered HTTP {status} {reason}: the receiver redirects, and crashmail does"
            " not follow (a redirected POST may arrive as a GET without the alert): give the"
            " URL it redirects to as the sink; a permanent error, not retried",
            permanent=True,
        )
    if 400 <= status < 500 and status not in (408, 429):
        hint = {
            401: "the receiver refused the credentials or token",
            403: "the receiver refused the credentials or token",
            404: "no such URL on the receiver: check the sink URL",
            410: "the receiver says this URL is gone: check the sink URL",
        }.get(status, "the receiver rejected the request")
        return SinkError(
            f"{what} answered HTTP {status} {reason}{suffix}; {hint}: a permanent error,"
            " not retried",
            permanent=True,
        )
    wait = f"; retry after {retry_after:g}s as asked" if retry_after is not None else ""
    return SinkError(
        f"{what} answered HTTP {status} {reason}{suffix}{wait}", retry_after=retry_after
    )


class Sink(Protocol):
    #: A stable name, used as part of the outbox's per-sink delivery record.
    name: str

    def send(self, alert: Alert) -> None: ...


class FileSink:
    """Appends one JSON object per alert to a file (the default sink)."""

    def __init__(self, path: str, name: str = "file") -> None:
        self.path = path
        self.name = name
        self.deadline: float | None = None

    def send(self, alert: Alert) -> None:
        """Append the alert as one whole line, or nothing: a disk that fills mid-line gets the
        line cut off again and the delivery fails (the outbox retries it), so the file never
        holds a broken line and the alert is never counted delivered half-written."""
        line = (file_record(clean_alert(alert)) + "\n").encode("utf-8")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SinkError(f"cannot append to {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another appender must not land between cut and write
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line cut by something else: start ours on a new one
            written = 0
            try:
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise SinkError(
                    f"cannot append to {self.path}: {exc.strerror} ({written} of {len(line)}"
                    " bytes written, cut off again; the alert stays in the outbox)"
                ) from None
        finally:
            os.close(fd)


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
        self.deadline: float | None = None

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
            proc = child.run(self.argv, self.timeout, data=data)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SinkError(f"cannot run {self.argv[0]}: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[:200]
            raise SinkError(f"{self.argv[0]} exited {proc.returncode}: {err}")
