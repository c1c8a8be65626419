"""Opening crashmail's outbox at start: claimed for one supervisord, a passing trouble waited out.

A listener that has not said READY is given no events: supervisord keeps them in the pool's
buffer. So a crashmail that finds its outbox locked by another process, or its disk full, waits
and tries again before it takes events, where an exit would end in FATAL after a few tries and
take every later alert with it.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable

from listeners.core.log import get_logger
from listeners.notify.outbox import Outbox, OutboxHealth, OutboxOwnerError, Owner

__all__ = ["open_claimed", "passing_trouble"]

log = get_logger("listeners.notify.opening")

#: Words of SQLite errors that pass: another process holds the lock, or the disk is full.
_PASSING = ("locked", "busy", "full", "disk i/o")


def passing_trouble(exc: BaseException) -> bool:
    """True for an outbox error that waiting can mend (a lock, a full disk), False for one
    that it cannot (no permission, not a database, a folder in the way)."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(word in str(exc).lower() for word in _PASSING)
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN)
    return False


def open_claimed(
    path: str,
    owner: Owner,
    on_health: Callable[[OutboxHealth], None],
    *,
    every: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Outbox:
    """The outbox at ``path``, claimed for ``owner``; waits while it is locked or its disk is
    full, trying again every ``every`` seconds, and says so once (log and ``on_health``).

    OutboxOwnerError and errors that waiting cannot mend are raised.
    """
    said = False
    while True:
        try:
            outbox = Outbox(path, on_health=on_health)
            outbox.claim(owner)
        except OutboxOwnerError:
            raise
        except (sqlite3.Error, OSError) as exc:
            if not passing_trouble(exc):
                raise
            if not said:
                said = True
                log.error(
                    "outbox.unavailable_at_start",
                    outbox=path,
                    error=str(exc),
                    hint=f"crashmail tries again every {every:g} s before it takes events;"
                    " supervisord keeps them meanwhile (up to the pool's buffer_size):"
                    " free the disk, or stop what holds the outbox's lock",
                )
                on_health(OutboxHealth(True, str(exc), 0, 0))
            sleep(every)
            continue
        if said:
            log.info("outbox.available", outbox=path)
            on_health(OutboxHealth(False, "", 0, 0))
        return outbox
