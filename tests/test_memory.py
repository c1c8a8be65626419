"""Unit tests of listeners.core.memory against this machine's /proc and a fake one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from listeners.core.memory import Meter, Reading, Unreadable, parse_rollup

CHILD = (
    "import time; b = bytearray(24 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]);"
    " time.sleep(30)"
)


@pytest.fixture
def parent_with_big_child():
    """A small parent whose child holds 24 MB."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}])",
        ]
    )
    import psutil

    parent = psutil.Process(proc.pid)
    for _ in range(100):
        kids = parent.children()
        if kids and kids[0].memory_info().rss > 24 * 1024 * 1024:
            break
        import time

        time.sleep(0.05)
    yield proc.pid
    for kid in parent.children(recursive=True):
        kid.kill()
    proc.kill()
    proc.wait()


class TestMeter:
    @pytest.mark.parametrize("measure", ["rss", "pss", "uss"])
    def test_measures_itself(self, measure):
        """Each measure gives a plausible size for this Python process."""
        [reading] = Meter(measure).measure({"me": os.getpid()}).values()
        assert isinstance(reading, Reading)
        assert 1 == reading.processes
        assert 1024 * 1024 < reading.bytes < 2 * 1024**3

    def test_a_missing_pid_is_gone_not_an_exception(self):
        """A pid that does not exist reads as gone."""
        assert "gone" == Meter().measure({"x": 2**22 + 12345})["x"].reason  # type: ignore[union-attr]

    def test_a_reused_pid_is_not_measured(self):
        """The cached descriptor belongs to the process, so once it is reaped it reads gone."""
        proc = subprocess.Popen(["sleep", "30"])
        meter = Meter()
        assert isinstance(meter.measure({"s": proc.pid})["s"], Reading)
        proc.kill()
        proc.wait()
        assert isinstance(meter.measure({"s": proc.pid})["s"], Unreadable)

    def test_cumulative_counts_the_tree(self, parent_with_big_child):
        """With cumulative the child's memory counts; without, only the parent's."""
        alone = Meter().measure({"p": parent_with_big_child})["p"]
        tree = Meter(cumulative=True).measure({"p": parent_with_big_child})["p"]
        assert isinstance(alone, Reading)
        assert isinstance(tree, Reading)
        assert 2 == tree.processes
        assert tree.bytes > alone.bytes + 20 * 1024 * 1024

    def test_descriptors_of_forgotten_pids_are_closed(self):
        """A pid dropped from the watch list has its descriptor closed."""
        meter = Meter()
        meter.measure({"me": os.getpid()})
        assert [os.getpid()] == list(meter._fds)
        meter.measure({})
        assert {} == meter._fds

    def test_unknown_measure(self):
        """Only rss, pss and uss exist."""
        with pytest.raises(ValueError, match="'vss'"):
            Meter("vss")


class TestParsing:
    def test_rollup_fields(self):
        """PSS is Pss; USS is Private_Clean + Private_Dirty; values are kB."""
        text = b"Rss: 100 kB\nPss: 60 kB\nPrivate_Clean: 10 kB\nPrivate_Dirty: 20 kB\n"
        assert 60 * 1024 == parse_rollup(text, "pss")
        assert 30 * 1024 == parse_rollup(text, "uss")
