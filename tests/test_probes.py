"""core/probes' pool: probes run off the caller's thread, one at a time per key."""

from __future__ import annotations

import threading

from listeners.watchdog.probes import Probe, ProbePool, ProbeResult, TcpProbe


def ok(_: Probe) -> ProbeResult:
    return ProbeResult(True, "ok", 0.0)


class TestProbePool:
    def test_a_submit_after_close_is_refused_not_raised(self):
        """A round handed out while the listener stops: False, no RuntimeError from the pool."""
        pool = ProbePool(2, runner=ok)
        pool.close()
        probe = TcpProbe("127.0.0.1", 9)
        assert pool.submit("web:web", probe, lambda key, result: None) is False

    def test_one_probe_per_key_at_a_time(self):
        """While a key's probe runs, a second submit for it is refused; others are taken."""
        release = threading.Event()
        done: list[str] = []

        def slow(_: Probe) -> ProbeResult:
            release.wait(10)
            return ProbeResult(True, "ok", 0.0)

        pool = ProbePool(2, runner=slow)
        probe = TcpProbe("127.0.0.1", 9)
        try:
            got = [pool.submit(k, probe, lambda key, _r: done.append(key)) for k in "aab"]
        finally:
            release.set()
            pool.close()
        assert [True, False, True] == got
