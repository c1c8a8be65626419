"""Notices sent straight to their sinks, without an outbox: memmon's superlance-style mails.

memmon's ``-m``/``--alert-file`` notices are best effort, as in superlance: one try per sink,
failures logged. crashmail is the listener that never loses an alert.
"""

from __future__ import annotations

from collections.abc import Sequence

from listeners.core.log import get_logger
from listeners.notify.alert import Alert
from listeners.notify.sinks import FileSink, SendmailSink, Sink, SinkError

__all__ = ["Notices"]

log = get_logger("listeners.notice")


class Notices:
    """The sinks of ``-m ADDRESS``/``-s COMMAND``/``-n NAME``/``--alert-file PATH``."""

    def __init__(
        self,
        email: Sequence[str],
        sendmail_program: str,
        name: str | None,
        alert_file: str | None,
        *,
        tool: str = "memmon",
    ) -> None:
        self.sinks: list[Sink] = []
        if email:
            prefix = f"{tool} [{name}]:" if name else f"{tool}:"
            self.sinks.append(SendmailSink(list(email), sendmail_program, subject_prefix=prefix))
        if alert_file:
            self.sinks.append(FileSink(alert_file))
        self.tool = tool

    def send(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.send(alert)
            except SinkError as exc:
                log.error(f"{self.tool}.notice_failed", sink=sink.name, error=str(exc))
            else:
                log.info(f"{self.tool}.notice_sent", sink=sink.name, kind=alert.kind)
