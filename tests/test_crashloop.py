"""The shared crash-loop rule, driven by a fake clock."""

from __future__ import annotations

from listeners.core.crashloop import CrashLoopDetector, LoopChange
from listeners.core.protocol import ProcessStateEvent, parse_event, parse_header
from tests.fakes import FakeClock


def state(st: str, name: str = "w", expected: int | None = None) -> ProcessStateEvent:
    extra = f" expected:{expected} pid:1" if expected is not None else ""
    payload = f"processname:{name} groupname:g from_state:RUNNING{extra}"
    h = parse_header(
        f"ver:3.0 server:s serial:1 pool:p poolserial:1 eventname:PROCESS_STATE_{st} "
        f"len:{len(payload)}"
    )
    e = parse_event(h, payload)
    assert isinstance(e, ProcessStateEvent)
    return e


class TestCrashLoopDetector:
    def test_third_unexpected_exit_in_window_starts_a_loop_once(self):
        """With 3/60s, the third crash starts the loop; the fourth says nothing new."""
        clock = FakeClock()
        d = CrashLoopDetector(3, 60, clock=clock)
        changes = []
        for _ in range(4):
            changes.append(d.observe(state("EXITED", expected=0)))
            clock.now += 5
            d.observe(state("RUNNING"))
        assert [None, None, LoopChange("g:w", True, 3), None] == changes
        assert "g:w" in d.looping()

    def test_exits_spread_wider_than_the_window_are_not_a_loop(self):
        """Three crashes 40 s apart with a 60 s window never make a loop."""
        clock = FakeClock()
        d = CrashLoopDetector(3, 60, clock=clock)
        for _ in range(5):
            assert d.observe(state("EXITED", expected=0)) is None
            clock.now += 40
        assert "g:w" not in d.looping()

    def test_expected_exits_never_count(self):
        """Workers that exit 0 on purpose (expected:1) are not crashing."""
        d = CrashLoopDetector(2, 60, clock=FakeClock())
        for _ in range(10):
            d.observe(state("EXITED", expected=1))
        assert set() == d.looping()
        assert d.observe(state("EXITED", expected=0)) is None  # the first crash of two

    def test_backoff_counts_as_a_failed_start(self):
        """Deaths before startsecs (BACKOFF) count towards the loop."""
        d = CrashLoopDetector(3, 60, clock=FakeClock())
        changes = [d.observe(state("BACKOFF")) for _ in range(3)]
        assert LoopChange("g:w", True, 3) == changes[-1]

    def test_resolves_after_a_whole_window_running(self):
        """The loop ends once the process has been RUNNING for the window, not before."""
        clock = FakeClock()
        d = CrashLoopDetector(2, 60, clock=clock)
        d.observe(state("EXITED", expected=0))
        d.observe(state("EXITED", expected=0))
        d.observe(state("RUNNING"))
        clock.now += 59
        assert [] == d.check()
        clock.now += 2
        assert [LoopChange("g:w", False, 2)] == d.check()
        assert "g:w" not in d.looping()

    def test_a_crash_while_resolving_restarts_the_wait(self):
        """A crash during the quiet period keeps the loop open."""
        clock = FakeClock()
        d = CrashLoopDetector(2, 60, clock=clock)
        for _ in range(2):
            d.observe(state("EXITED", expected=0))
        d.observe(state("RUNNING"))
        clock.now += 50
        d.observe(state("EXITED", expected=0))
        d.observe(state("RUNNING"))
        clock.now += 50
        assert [] == d.check()
        assert "g:w" in d.looping()

    def test_stopping_on_purpose_ends_the_loop(self):
        """supervisorctl stop (STOPPED) resolves a loop at once."""
        d = CrashLoopDetector(1, 60, clock=FakeClock())
        d.observe(state("EXITED", expected=0))
        assert LoopChange("g:w", False, 1) == d.observe(state("STOPPED"))

    def test_fatal_ends_the_loop_without_a_resolution(self):
        """After FATAL (supervisord gave up) the process is not looping; nothing says stable."""
        d = CrashLoopDetector(3, 60, clock=FakeClock())
        changes = [d.observe(state("BACKOFF")) for _ in range(3)]
        assert LoopChange("g:w", True, 3) == changes[-1]
        assert d.observe(state("FATAL")) is None
        assert set() == d.looping()
        assert [] == d.check()
        # the count starts over: two failed starts are not yet a loop of three, a third is
        assert [None, None] == [d.observe(state("BACKOFF")) for _ in range(2)]
        assert LoopChange("g:w", True, 3) == d.observe(state("BACKOFF"))
