"""Run a helper program (a probe, gcore, sendmail) so that a timeout ends all of it.

``subprocess.run(timeout=...)`` kills only the program it started: a probe script's
``curl``, the ``gdb`` that ``gcore`` runs or a sendmail's queue runner lives on, and a
probe that hangs every round leaves one more orphan each time, attached to the worker
(gdb keeps it stopped) or holding a pipe open. Here the helper gets a session of its own
and a timeout kills that whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Finished", "run"]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes


def run(
    argv: Sequence[str],
    timeout: float,
    data: bytes | None = None,
    keep_stdout: bool = False,
    leave_nothing: bool = False,
) -> Finished:
    """Run ``argv`` with ``data`` on its stdin (or none) and return how it ended.

    Raises OSError when it cannot start and subprocess.TimeoutExpired after ``timeout``
    seconds, once every process of its group has been killed. ``leave_nothing`` (probes)
    also kills what is left of its group when it exits: a check that runs every few seconds
    must not leave a background child behind each time.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.kill()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # a descendant that left the group still holds a pipe: stop reading
            proc.wait(timeout=5)
        raise
    except BaseException:
        _kill_group(proc.pid)
        proc.kill()
        proc.wait()
        raise
    # a helper that finished may leave work behind on purpose (a sendmail that delivers in
    # the background): only a timeout ends its group, unless the caller says otherwise
    if leave_nothing:
        _kill_group(proc.pid)
    return Finished(proc.returncode, out or b"", err or b"")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
