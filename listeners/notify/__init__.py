"""Alerts and the sinks that deliver them (file, sendmail; crashmail adds more)."""

from listeners.notify.alert import KINDS, Alert, render_text
from listeners.notify.sinks import FileSink, SendmailSink, Sink, SinkError

__all__ = ["KINDS", "Alert", "FileSink", "SendmailSink", "Sink", "SinkError", "render_text"]
