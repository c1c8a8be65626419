"""Memory of a pid or a process tree, read in one pass per check.

Linux only, from /proc. A check reads ``statm`` (RSS) or ``smaps_rollup`` (PSS, USS) of each
known pid. The descriptor of ``/proc/<pid>`` (or of its ``statm``) is kept open between
checks: it is bound to that process, not to the number, so a pid that dies and is reused by
another process reads as gone (ESRCH) instead of measuring a stranger, and a check costs one
``pread`` per worker instead of open/read/close. With ``cumulative`` one psutil pass over all
processes finds each worker's descendants.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["MEASURES", "Meter", "Reading", "Unreadable", "parse_rollup"]

MEASURES = ("rss", "pss", "uss")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_GONE = (errno.ESRCH, errno.ENOENT)
_DENIED = (errno.EACCES, errno.EPERM)


@dataclass(frozen=True, slots=True)
class Reading:
    """What one worker (and, cumulative, its descendants) uses."""

    bytes: int
    processes: int = 1


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a pid could not be measured: ``gone`` (exited, reused) or ``denied``."""

    reason: str
    detail: str = ""


def parse_rollup(text: bytes, measure: str) -> int:
    """PSS or USS in bytes from ``smaps_rollup`` (or ``smaps``) text; values are in kB."""
    total = 0
    wanted = (b"Pss:",) if measure == "pss" else (b"Private_Clean:", b"Private_Dirty:")
    for line in text.splitlines():
        if line.startswith(wanted):
            total += int(line.split()[1]) * 1024
    return total


class Meter:
    """Measures many pids per call; keep one for the life of the listener (it caches fds)."""

    def __init__(self, measure: str = "rss", *, cumulative: bool = False, proc: str = "/proc"):
        if measure not in MEASURES:
            raise ValueError(f"invalid measure {measure!r}: expected one of {', '.join(MEASURES)}")
        self.measure_name = measure
        self.cumulative = cumulative
        self.proc = proc
        # pid -> fd of /proc/<pid>/statm (rss) or of the /proc/<pid> directory (pss, uss).
        self._fds: dict[int, int] = {}
        self._rollup = "smaps_rollup"

    # ------------------------------------------------------------------ one process

    def _fd(self, pid: int) -> int:
        fd = self._fds.get(pid)
        if fd is None:
            if self.measure_name == "rss":
                fd = os.open(f"{self.proc}/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._fds[pid] = fd
        return fd

    def _drop(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def _read_rollup(self, dir_fd: int) -> int:
        try:
            fd = os.open(self._rollup, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            if self._rollup == "smaps":
                raise
            # Kernels before 4.14 have no smaps_rollup; smaps has the same fields per mapping.
            self._rollup = "smaps"
            fd = os.open(self._rollup, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return parse_rollup(b"".join(chunks), self.measure_name)

    def one(self, pid: int) -> int:
        """Bytes of one pid through its cached descriptor; raises OSError."""
        try:
            fd = self._fd(pid)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            return self._uncached(pid)  # out of descriptors: slower, still right
        try:
            if self.measure_name == "rss":
                # An exited process reads as empty: split()[1] raises IndexError below.
                return int(os.pread(fd, 256, 0).split()[1]) * _PAGE
            return self._read_rollup(fd)
        except (OSError, ValueError, IndexError):
            self._drop(pid)
            raise

    def _uncached(self, pid: int) -> int:
        """Bytes of a descendant (they come and go, so no cached descriptor)."""
        if self.measure_name == "rss":
            with open(f"{self.proc}/{pid}/statm", "rb") as fh:
                return int(fh.read().split()[1]) * _PAGE
        fd = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return self._read_rollup(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ a check

    def measure(self, pids: Mapping[str, int]) -> dict[str, Reading | Unreadable]:
        """Measure every ``name -> pid``; never raises for a process that vanished."""
        children = self._children() if self.cumulative else {}
        result: dict[str, Reading | Unreadable] = {}
        for key, pid in pids.items():
            try:
                total = self.one(pid)
            except OSError as exc:
                result[key] = _unreadable(exc)
                continue
            except (ValueError, IndexError):
                result[key] = Unreadable("gone", "process exited")
                continue
            count = 1
            for child in _descendants(pid, children):
                try:
                    total += self._uncached(child)
                except (OSError, ValueError, IndexError):
                    continue  # a child that exits mid-check simply stops counting
                count += 1
            result[key] = Reading(total, count)
        self.forget(set(self._fds) - set(pids.values()))
        return result

    def forget(self, pids: Iterable[int]) -> None:
        """Close the descriptors of pids no longer watched."""
        for pid in list(pids):
            self._drop(pid)

    def close(self) -> None:
        self.forget(list(self._fds))

    def _children(self) -> dict[int, list[int]]:
        """ppid -> pids of every process on the host, in one psutil pass."""
        import psutil

        tree: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid is not None:
                tree.setdefault(ppid, []).append(proc.pid)
        return tree


def _descendants(pid: int, children: Mapping[int, list[int]]) -> list[int]:
    found: list[int] = []
    stack = list(children.get(pid, ()))
    seen = {pid}
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        found.append(child)
        stack.extend(children.get(child, ()))
    return found


def _unreadable(exc: OSError) -> Unreadable:
    if exc.errno in _DENIED:
        return Unreadable("denied", exc.strerror or "permission denied")
    if exc.errno in _GONE:
        return Unreadable("gone", exc.strerror or "no such process")
    return Unreadable("error", f"{type(exc).__name__}: {exc.strerror or exc}")
