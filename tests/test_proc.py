"""The /proc reader on a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from listeners.metrics.proc import ProcReader
from tests.fakes import FakeClock

CHILDREN = 1000


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
        return [int(k) for k in fh.read().split()]


def rss_pages(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rpartition(b")")[2].split()[21])


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@pytest.fixture
def big_tree() -> Iterator[int]:
    """A shell with 1,000 sleeping children (its own session, killed at teardown)."""
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f"i=0; while [ $i -lt {CHILDREN} ]; do sleep 600 & i=$((i+1)); done; wait",
        ],
        start_new_session=True,
    )
    try:
        for _ in range(600):
            kids = children_of(proc.pid)
            if len(kids) == CHILDREN and all(comm(k) == "sleep" for k in kids):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the shell started {len(children_of(proc.pid))} of {CHILDREN} children")
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class TestBigTree:
    def test_memory_sums_every_child_of_a_1000_child_tree(self, big_tree):
        """A children list longer than 4 KiB is read whole: all 1,000 children are summed."""
        kids = children_of(big_tree)
        with open(f"/proc/{big_tree}/task/{big_tree}/children", "rb") as fh:
            assert len(fh.read()) > 4096
        pages = rss_pages(big_tree) + sum(rss_pages(k) for k in kids)
        usage = ProcReader().usage(big_tree)
        assert usage is not None
        assert pages * os.sysconf("SC_PAGE_SIZE") == usage.memory_bytes


class TestJudged:
    """Measured as memmon measures (its --measure and -c), beside the tree's RSS."""

    def test_rss_of_the_top_process_or_of_the_tree(self, big_tree):
        reader = ProcReader()
        alone = reader.usage(big_tree, ("rss", False))
        tree = reader.usage(big_tree, ("rss", True))
        assert alone is not None
        assert tree is not None
        assert alone.judged_bytes == rss_pages(big_tree) * os.sysconf("SC_PAGE_SIZE")
        assert tree.judged_bytes == tree.memory_bytes
        assert tree.memory_bytes > 100 * alone.judged_bytes // 2  # 1,000 sleeps beside one shell

    def test_pss_and_uss_from_smaps_rollup(self):
        """This process's PSS and USS as memmon reads them: above zero, under its RSS, USS
        not above PSS."""
        reader = ProcReader()
        pss = reader.usage(os.getpid(), ("pss", False))
        uss = reader.usage(os.getpid(), ("uss", False))
        assert pss is not None
        assert uss is not None
        assert pss.judged_bytes is not None
        assert uss.judged_bytes is not None
        assert 0 < uss.judged_bytes <= pss.judged_bytes < pss.memory_bytes

    def test_no_judge_or_an_unknown_measure_judges_nothing(self):
        reader = ProcReader()
        assert reader.usage(os.getpid()).judged_bytes is None  # type: ignore[union-attr]
        odd = reader.usage(os.getpid(), ("vsz", False))
        assert odd is not None
        assert odd.judged_bytes is None

    def test_a_pss_reading_is_reused_for_judged_max_age_then_read_again(self):
        """smaps_rollup costs ~85 us a worker: a scrape within JUDGED_MAX_AGE of the last read
        reuses it (the history sampler refreshes it every 15 s); RSS is never cached."""
        from listeners.metrics.proc import JUDGED_MAX_AGE

        clock = FakeClock(1000.0)
        reader = ProcReader(clock=clock)
        reads: list[tuple[int, str]] = []
        real = reader._judged

        def counting(pid: int, pages: int, measure: str) -> int | None:
            reads.append((pid, measure))
            return real(pid, pages, measure)

        reader._judged = counting  # type: ignore[method-assign]
        me = os.getpid()
        first = reader.usage(me, ("pss", False))
        clock.advance(JUDGED_MAX_AGE - 1)
        again = reader.usage(me, ("pss", False))
        assert first is not None
        assert again is not None
        assert first.judged_bytes == again.judged_bytes
        assert [(me, "pss")] == reads
        clock.advance(2)
        reader.usage(me, ("pss", False))
        assert [(me, "pss"), (me, "pss")] == reads
        reader.usage(me, ("rss", False))
        reader.usage(me, ("rss", False))
        assert 2 == reads.count((me, "rss"))
        # the history sampler refreshes: it reads again at once, and scrapes reuse its reading
        reader.usage(me, ("pss", False), refresh=True)
        assert 3 == reads.count((me, "pss"))
        reader.usage(me, ("pss", False))
        assert 3 == reads.count((me, "pss"))
