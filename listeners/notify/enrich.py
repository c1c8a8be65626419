"""Details added to an alert just before it is sent: exit status, spawn error, stderr tail.

Runs on a courier thread, never on the event loop: each call is one or two XML-RPC round trips.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from listeners.core.exits import classify, exit_from_log
from listeners.core.log import get_logger
from listeners.core.names import info_name
from listeners.core.supervisor import (
    ReplyUnreadable,
    SupervisorError,
    SupervisorRPC,
    read_main_log,
)
from listeners.notify.alert import Alert, clean_text, collapse_repeats
from listeners.notify.flood import summary_text

log = get_logger("listeners.notify.enrich")

__all__ = ["NO_LOG", "enrich_alert", "read_tail_file"]


def _tail(text: str, lines: int) -> str:
    return collapse_repeats(text, lines)


#: The spawnerr supervisord sets on any unexpected exit (process.py finish()).
_BAD_EXIT = re.compile(r"Bad exit code -?\d+")
NO_LOG = "(no stderr log file: the program logs stderr to /dev/stderr, syslog or nowhere)"


def enrich_alert(alert: Alert, rpc: SupervisorRPC, tail_lines: int = 20) -> Alert:
    """Add exit status, spawn error and stderr tail over XML-RPC (runs on a courier thread)."""
    if alert.kind in ("crash", "crash_loop", "fatal", "backoff") and alert.group:
        return _enrich_one(alert, rpc, tail_lines)
    if alert.kind == "summary":
        return _enrich_summary(alert, rpc)
    return alert


def read_tail_file(path: str, size: int = 8192) -> str | None:
    """The last ``size`` bytes of a log file, decoded leniently; None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            fh.seek(max(0, end - size))
            data = fh.read(size)
    except OSError:
        return None
    return data.decode("utf-8", "replace")


def _stderr_tail(
    rpc: SupervisorRPC, full: str, info: dict[str, Any], size: int = 8192
) -> str | None:
    """The stderr tail over RPC; when supervisord's reply cannot be parsed, from the log file.

    supervisord puts the log bytes into its XML reply as they are, so one ANSI colour code
    (ESC is not allowed in XML 1.0) makes the whole reply unreadable; the path of the file is
    in getProcessInfo's ``stderr_logfile`` and the file is on this host.
    """
    try:
        return rpc.tail_stderr(full, size)
    except ReplyUnreadable as exc:
        return _tail_from_file(full, info, size, exc)
    except SupervisorError:
        raise
    except Exception as exc:  # xml.parsers.expat.ExpatError and friends, from another client
        return _tail_from_file(full, info, size, exc)


def _tail_from_file(full: str, info: dict[str, Any], size: int, exc: Exception) -> str:
    path = str(info.get("stderr_logfile") or "")
    text = read_tail_file(path, size) if path else None
    log.warning(
        "crashmail.tail_unparsable",
        process=full,
        error=f"{type(exc).__name__}: {exc}",
        fallback="log file" if text is not None else "none",
    )
    if text is None:
        return f"(stderr tail unavailable: supervisord's reply was not valid XML: {exc})"
    return text


def _enrich_one(alert: Alert, rpc: SupervisorRPC, tail_lines: int) -> Alert:
    full = alert.process
    details = dict(alert.details)
    try:
        info = rpc.process_info(full)
    except SupervisorError as exc:
        return replace(alert, details={**details, "rpc_error": str(exc)})
    exit_status = alert.exit_status
    # the crash's own pid: supervisord's log then gives that exit's status, not the latest
    pid = details.get("pid") if isinstance(details.get("pid"), int) else None
    note = bool(details.get("note"))  # "stopped on purpose": no exit to describe
    if alert.kind in ("crash", "crash_loop", "fatal") and exit_status is None and not note:
        same = pid is None or pid == info.get("pid") or not info.get("pid")
        if info.get("statename") == "EXITED" and same:
            exit_status = int(info.get("exitstatus") or 0)
        else:
            # Restarted already: spawn() cleared exitstatus; a start that failed before
            # startsecs (BACKOFF, FATAL) never set it. supervisord's log has it either way.
            exit_status, how = exit_from_log(read_main_log(rpc), alert.name, pid)
            if how.startswith("terminated"):
                details["signal"] = how.removeprefix("terminated by ")
    if exit_status == -1 and "signal" not in details:
        # supervisord says -1 for any signal; only its log line names which.
        how = exit_from_log(read_main_log(rpc), alert.name, pid)[1]
        if how.startswith("terminated"):
            details["signal"] = how.removeprefix("terminated by ").split(" ")[0]
    if info.get("spawnerr"):
        details["spawnerr"] = str(info["spawnerr"])
    message = alert.message
    # supervisord sets spawnerr "Bad exit code N" on every unexpected exit: the exit status
    # says that already; a real spawn error (no such file, ...) is worth the line.
    said = str(details.get("spawnerr") or "")
    if said and said not in message and not _BAD_EXIT.fullmatch(said):
        message = (message + "\n" if message else "") + f"spawnerr: {details['spawnerr']}"
    text: str | None = None
    try:
        text = _stderr_tail(rpc, full, info)
        tail = NO_LOG if text is None else _tail(clean_text(text.replace("\r\n", "\n")), tail_lines)
    except SupervisorError as exc:
        tail = f"(stderr tail unavailable: {exc})"
    if not note:
        reason = classify(
            exit_status,
            signal=details.get("signal"),
            stderr_tail=text,
            oom_kill=bool(details.get("oom_kill")),
        )
        details["reason"], details["reason_text"] = reason.reason, reason.text
    return replace(
        alert, exit_status=exit_status, stderr_tail=tail, details=details, message=message
    )


def _enrich_summary(alert: Alert, rpc: SupervisorRPC) -> Alert:
    items = alert.details.get("items", [])
    if any(i.get("exit_status") is None and i.get("kind") == "crash" for i in items):
        try:
            infos = {info_name(i): i for i in rpc.all_process_info()}
        except SupervisorError:
            return alert
        log_tail: str | None = None
        new_items = []
        for it in items:
            info = infos.get(info_name(it))
            if it.get("exit_status") is not None or it["kind"] != "crash" or not info:
                new_items.append(it)
            elif info.get("statename") == "EXITED" and it.get("pid") in (None, info.get("pid")):
                # BACKOFF and FATAL: a start that failed never set exitstatus (it reads 0)
                new_items.append({**it, "exit_status": int(info.get("exitstatus") or 0)})
            else:
                if log_tail is None:
                    log_tail = read_main_log(rpc, 262144)
                pid = it.get("pid") if isinstance(it.get("pid"), int) else None
                status = exit_from_log(log_tail, it["name"], pid)[0]
                new_items.append({**it, "exit_status": status})
        return replace(
            alert, details={**alert.details, "items": new_items}, message=summary_text(new_items)
        )
    return alert
