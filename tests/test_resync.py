"""core.resync: when a listener re-reads the process table (seed, wanted, safety, failures)."""

from __future__ import annotations

from listeners.core.resync import RETRY_AFTER, Resync
from tests.fakes import FakeClock


def test_the_seed_comes_first_and_once():
    """Nothing read yet: the seed is due at once, and not again after it is done."""
    clock = FakeClock()
    sync = Resync(safety=3600, clock=clock)
    assert "seed" == sync.take()
    assert sync.running
    assert sync.take() is None, "reads never overlap"
    sync.done()
    assert sync.seeded
    assert sync.take() is None


def test_a_wanted_read_waits_until_its_reason_has_settled():
    """Lost events are read once, settle seconds after the first of a storm."""
    clock = FakeClock()
    sync = Resync(settle=1.0, clock=clock)
    sync.begin()
    sync.done()
    sync.want("lost")
    clock.now += 0.5
    sync.want("lost")  # more of the same storm: still timed from the first
    assert sync.take() is None
    clock.now += 0.5
    assert "lost" == sync.take()
    sync.done()
    assert [] == sync.wanted()


def test_spacing_bounds_reads_and_safety_comes_regardless():
    """A wanted read waits for spacing since the last; the safety read needs no reason."""
    clock = FakeClock()
    sync = Resync(spacing=60, safety=3600, clock=clock)
    sync.begin()
    sync.done()
    sync.want("no state events")
    clock.now += 59
    assert sync.due() is None
    clock.now += 1
    assert "no state events" == sync.take()
    sync.done()
    clock.now += 3599
    assert sync.due() is None
    clock.now += 1
    assert "safety" == sync.due()


def test_a_reason_given_during_a_read_is_kept_for_the_next():
    """The running read may have looked before the change: the reason waits for another."""
    clock = FakeClock()
    sync = Resync(clock=clock)
    sync.want("group added")
    assert "seed" == sync.take()
    clock.now += 0.1
    sync.want("lost")
    sync.done()
    assert ["lost"] == sync.wanted(), "the reason given before the seed began is answered"
    assert "lost" == sync.take()


def test_a_failed_read_keeps_its_reasons_and_is_retried_later():
    """supervisord down: the seed stays due, tried again after RETRY_AFTER, not in a spin."""
    clock = FakeClock()
    sync = Resync(clock=clock)
    sync.want("lost")
    assert "seed" == sync.take()
    sync.done(ok=False)
    assert not sync.seeded
    assert sync.take() is None
    clock.now += RETRY_AFTER
    assert "seed" == sync.take()
    sync.done()
    assert "lost" not in sync.wanted(), "given before the good read began"


def test_a_failure_waits_for_the_spacing_when_that_is_longer():
    """memmon's 60 s spacing also spaces its retries."""
    clock = FakeClock()
    sync = Resync(spacing=60, clock=clock)
    sync.begin()
    sync.done()
    sync.want("lost")
    clock.now += 60
    assert "lost" == sync.take()
    sync.done(ok=False)
    clock.now += 59
    assert sync.take() is None
    clock.now += 1
    assert "lost" == sync.take()
