"""Which groups are event listener pools, as supervisord's own configuration says.

Nothing in ``getAllProcessInfo`` or ``getAllConfigInfo`` tells a listener from a worker, and a
command line says nothing either (a worker may well run ``php artisan queue:work --queue
crashmail``). The configuration does: a pool is an ``[eventlistener:NAME]`` section, and NAME is
its group. A listener runs as a child of supervisord, so the conf supervisord was started with
is found from the parent's command line (``-c``/``--configuration``, relative to its working
directory) or supervisord's own search path; ``[include] files=`` globs are followed.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import stat
from collections.abc import Sequence

__all__ = ["ConfError", "listener_groups", "supervisord_conf"]

_HEADER = re.compile(r"^\[([^\]]*)\]\s*$")
#: supervisord's search path when started without -c (supervisor/options.py).
_SEARCH = ("../etc/supervisord.conf", "../supervisord.conf", "supervisord.conf",
           "etc/supervisord.conf", "/etc/supervisord.conf",
           "/etc/supervisor/supervisord.conf")  # fmt: skip


class ConfError(Exception):
    """The configuration could not be found or read; the message says which and why."""


def _parent_argv(pid: int, proc: str) -> list[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfError(f"cannot read the command line of supervisord (pid {pid}): {exc}") from None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _conf_flag(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("-c", "--configuration") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--configuration="):
            return arg.partition("=")[2]
        if arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            return arg[2:]
    return None


def supervisord_conf(ppid: int | None = None, proc: str = "/proc") -> str:
    """The conf file of the supervisord that started this process; raises ConfError."""
    pid = os.getppid() if ppid is None else ppid
    argv = _parent_argv(pid, proc)
    if "supervisord" not in " ".join(argv[:3]):  # supervisord, or python -m supervisor.supervisord
        raise ConfError(
            f"the parent process (pid {pid}) is not supervisord: {' '.join(argv[:2])[:80]!r}"
        )
    try:
        cwd = os.readlink(f"{proc}/{pid}/cwd")
    except OSError:
        cwd = "/"
    given = _conf_flag(argv)
    candidates = [given] if given else list(_SEARCH)
    for candidate in candidates:
        path = os.path.normpath(os.path.join(cwd, os.path.expanduser(candidate)))
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                return path
        except PermissionError:
            raise ConfError(
                f"supervisord's conf {path!r} may not be read by this user (permission denied)"
            ) from None
        except OSError:
            continue
    raise ConfError(f"supervisord's conf {(given or ' or '.join(_SEARCH))!r} was not found")


def _sections(path: str) -> tuple[list[str], list[str]]:
    """Section names and the ``[include] files`` value of one file (continuation lines)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfError(f"cannot read {path}: {exc.strerror or exc}") from None
    names: list[str] = []
    include: list[str] = []
    section = ""
    in_files = False
    for line in lines:
        match = _HEADER.match(line.strip()) if line[:1] not in (" ", "\t") else None
        if match:
            section = match.group(1).strip()
            names.append(section)
            in_files = False
            continue
        if section != "include":
            continue
        if in_files and line[:1] in (" ", "\t") and line.strip():
            include.extend(line.split())
            continue
        key, sep, value = line.partition("=")
        in_files = bool(sep) and key.strip() == "files"
        if in_files:
            include.extend(value.split())
    return names, include


def listener_groups(conf: str) -> frozenset[str]:
    """Names of every ``[eventlistener:NAME]`` pool in ``conf`` and the files it includes."""
    pools: set[str] = set()
    todo = [conf]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        names, include = _sections(path)
        pools.update(n.partition(":")[2].strip() for n in names if n.startswith("eventlistener:"))
        here = os.path.dirname(path)
        for raw in include:
            pattern = raw.replace("%(here)s", here)
            pattern = pattern.replace("%(host_node_name)s", socket.gethostname())
            todo.extend(sorted(glob.glob(os.path.join(here, pattern))))
    return frozenset(pools)
