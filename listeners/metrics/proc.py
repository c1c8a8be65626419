"""Memory and CPU of process trees, read straight from /proc for each scrape."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping

from listeners.core.memory import MEASURES, parse_rollup
from listeners.metrics.snapshot import Snapshot, SnapshotSource, Usage

__all__ = ["JUDGED_MAX_AGE", "ProcReader", "sample"]

#: Seconds a PSS/USS reading of a worker is served from cache (see ProcReader).
JUDGED_MAX_AGE = 20.0
JUDGED_CACHE_SOFT_CAP = 1024
#: Most descendants summed into one process's tree: a fork bomb must not stall a scrape.
TREE_MAX = 4096


class ProcReader:
    """Memory and CPU of process trees straight from /proc (no psutil objects per scrape).

    Descendants come from ``/proc/<pid>/task/<tid>/children`` (Linux >= 3.5), so a scrape
    reads a few small files per process and never walks all of /proc.
    """

    def __init__(self, proc: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.proc = proc
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.ticks = float(os.sysconf("SC_CLK_TCK"))
        self.clock = clock
        # PSS/USS by (pid, measure, cumulative) -> (bytes, when read): smaps_rollup costs the
        # kernel a page-table walk (~85 us per worker, 22 ms a scrape at 256), so a scrape
        # reuses what the history sampler (every 15 s) or a scrape read less than
        # JUDGED_MAX_AGE ago; memmon itself judges only every few seconds
        self._judged_cache: dict[tuple[int, str, bool], tuple[int, float]] = {}

    @staticmethod
    def _read(path: str, whole: bool = False) -> bytes | None:
        """The file's first 4 KiB, or all of it with ``whole``; None when it cannot be read."""
        # os.open/os.read: a Python file object costs more than the read itself here.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
            if not whole or not data:
                return data
            # A children list over 4 KiB (~600 pids) spans several reads, and seq_file stops a
            # read short of the size asked at a record boundary: read until end of file.
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _stat(self, pid: int) -> tuple[int, int, int, int] | None:
        """(rss pages, own cpu ticks, reaped children's cpu ticks, threads) or None if gone."""
        data = self._read(f"{self.proc}/{pid}/stat")
        if not data:
            return None
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 22 or fields[0] == b"Z":
            return None
        return (
            int(fields[21]),
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
            int(fields[17]),
        )

    def _children(self, pid: int, threads: int) -> list[int]:
        base = f"{self.proc}/{pid}/task"
        # Each thread lists the children it forked; most workers have one thread.
        tids: list[str] = [str(pid)]
        if threads > 1:
            try:
                tids = os.listdir(base)
            except OSError:
                return []
        kids: list[int] = []
        for tid in tids:
            data = self._read(f"{base}/{tid}/children", whole=True)
            if data:
                kids.extend(int(k) for k in data.split())
        return kids

    def _judged(self, pid: int, rss_pages: int, measure: str) -> int | None:
        """One process's memory the way memmon measures it; None when it cannot be read."""
        if measure == "rss":
            return rss_pages * self.page_size
        data = self._read(f"{self.proc}/{pid}/smaps_rollup", whole=True)
        return parse_rollup(data, measure) if data else None

    def usage(
        self, pid: int, judge: tuple[str, bool] | None = None, *, refresh: bool = False
    ) -> Usage | None:
        """The tree rooted at ``pid``; None when ``pid`` is gone.

        ``judge`` = (measure, cumulative) also measures it as memmon does (rss, pss or uss;
        of the tree or of ``pid`` alone), so the page and the metrics compare memmon's ceiling
        with what memmon compares it with, not with the tree's RSS.
        """
        top = self._stat(pid)
        if top is None:
            return None
        if judge is not None and judge[0] not in MEASURES:
            judge = None
        rss, ticks = top[0], top[1] + top[2]
        judged: int | None = None
        walk = False  # add the descendants' judged memory during the tree walk below
        if judge is not None:
            key = (pid, judge[0], judge[1])
            cached = self._judged_cache.get(key) if judge[0] != "rss" else None
            if not refresh and cached is not None and self.clock() - cached[1] < JUDGED_MAX_AGE:
                judged = cached[0]
            else:
                judged = self._judged(pid, top[0], judge[0])
                walk = judge[1] and judged is not None
        seen = {pid}
        todo = self._children(pid, top[3])
        while todo:
            child = todo.pop()
            if child in seen or len(seen) > TREE_MAX:
                continue
            seen.add(child)
            stat = self._stat(child)
            if stat is None:
                continue
            rss += stat[0]
            ticks += stat[1]
            if walk and judge is not None and judged is not None:
                judged += self._judged(child, stat[0], judge[0]) or 0
            todo.extend(self._children(child, stat[3]))
        if (
            judge is not None
            and judge[0] != "rss"
            and judged is not None
            and (walk or not judge[1])
        ):
            self._remember(pid, judge, judged, refresh)
        return Usage(rss * self.page_size, ticks / self.ticks, judged)

    def _remember(self, pid: int, judge: tuple[str, bool], value: int, refresh: bool) -> None:
        now = self.clock()
        key = (pid, judge[0], judge[1])
        stale = key not in self._judged_cache or now - self._judged_cache[key][1] >= JUDGED_MAX_AGE
        if stale or refresh:
            self._judged_cache[key] = (value, now)
        if len(self._judged_cache) > 4 * JUDGED_CACHE_SOFT_CAP:
            # pids of exited workers: drop what is too old to be used again
            for k, (_, at) in list(self._judged_cache.items()):
                if now - at >= JUDGED_MAX_AGE:
                    self._judged_cache.pop(k, None)

    def usage_many(
        self,
        pids: Mapping[str, int],
        judge: tuple[str, bool] | None = None,
        judged: Collection[str] = (),
        *,
        refresh: bool = False,
    ) -> dict[str, Usage]:
        """Usage of each ``name -> pid``; those in ``judged`` also measured as ``judge`` says
        (from a reading under JUDGED_MAX_AGE unless ``refresh``)."""
        out: dict[str, Usage] = {}
        for key, pid in pids.items():
            usage = self.usage(pid, judge if key in judged else None, refresh=refresh)
            if usage is not None:
                out[key] = usage
        return out


def sample(
    state: SnapshotSource, reader: ProcReader, *, refresh: bool = False
) -> tuple[Snapshot, dict[str, Usage]]:
    """What one scrape needs: the state copied under its lock, then /proc read outside it.
    ``refresh`` (the history sampler) reads PSS/USS afresh, which scrapes then reuse."""
    snap = state.snapshot()
    pids = {p.full_name: p.pid for p in snap.processes if p.pid} if snap.up else {}
    ceilinged = {p.full_name for p in snap.processes if p.memory_limit}
    return snap, reader.usage_many(pids, snap.memmon_measure, ceilinged, refresh=refresh)
