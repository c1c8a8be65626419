"""The /proc reader on a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from listeners.metrics.proc import ProcReader

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
