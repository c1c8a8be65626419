"""The words of the events_lost notice: what was lost, what to change, what a reconcile found."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["lost_message"]


def lost_message(lost: int, found: Sequence[str], restarted: Sequence[str]) -> str:
    """``lost`` events dropped by supervisord; ``found`` in BACKOFF/FATAL/EXITED unreported,
    ``restarted`` RUNNING under another pid (their exit status is gone with the events)."""
    text = (
        f"{lost} events were lost: supervisord's event buffer for this listener overflowed."
        " Raise buffer_size in its [eventlistener:x] section (4 x the number of processes,"
        " see docs/crashmail.md in the source tree). The reconcile found"
        f" {len(found)} process(es) in BACKOFF/FATAL/EXITED that no event reported"
        + (": " + ", ".join(found) if found else ".")
    )
    if restarted:
        text += f" {len(restarted)} process(es) restarted unseen (exit status lost): " + ", ".join(
            restarted
        )
    return text
