"""health's bus messages in the other tools: crashmail alerts on hung, the exporter's series."""

from __future__ import annotations

from listeners.core import bus, protocol
from listeners.core.background import Worker
from tests.test_crashmail import Harness
from tests.test_exporter import ev, info, make, registry_for, val


def remote(message: bus.Message) -> protocol.Event:
    return ev("REMOTE_COMMUNICATION", f"type:{bus.HEALTH_TYPE}\n{bus.encode(message)}")


def hung(action: str) -> bus.ProcessHung:
    return bus.ProcessHung(
        host="h",
        group="g",
        name="w",
        pid=3,
        reason="heartbeat",
        detail="no heartbeat for 61 s",
        action=action,
    )


class TestCrashmail:
    def test_a_hung_process_is_an_alert(self, tmp_path):
        """crashmail turns health's process_hung into a hung incident."""
        h = Harness(tmp_path)
        h.cm.handle(remote(hung("restart")))
        assert [("hung", "w")] == h.kinds()

    def test_grace_is_no_alert(self, tmp_path):
        """A verdict health only logged (grace) raises nothing."""
        h = Harness(tmp_path)
        h.cm.handle(remote(hung("grace")))
        assert [] == h.kinds()


class TestExporter:
    def test_health_status_becomes_probe_heartbeat_and_backoff_series(self):
        """HealthStatus gives probe_success, heartbeat_age_seconds and backoff_seconds; the
        age and the hold's time left move on between two of health's reports."""
        from tests.fakes import FakeClock

        worker = Worker("t")
        clock = FakeClock()
        try:
            state, handler, _ = make(
                worker,
                [info("g", "a", "RUNNING", pid=5), info("g", "b", "EXITED")],
                monotonic=clock,
            )
            status = bus.HealthStatus(
                host="h",
                probe_success={"g:a": 0},
                heartbeat_age={"g:a": 12.5},
                backoff_seconds={"g:b": 40.0},
            )
            handler.handle(remote(status))
            reg = registry_for(state)
            assert 0 == val(reg, "supervisord_process_probe_success", group="g", name="a")
            assert 12.5 == val(
                reg, "supervisord_process_heartbeat_age_seconds", group="g", name="a"
            )
            assert 40.0 == val(reg, "supervisord_process_backoff_seconds", group="g", name="b")
            assert val(reg, "supervisord_process_probe_success", group="g", name="b") is None
            clock.now += 10
            reg = registry_for(state)
            assert 22.5 == val(
                reg, "supervisord_process_heartbeat_age_seconds", group="g", name="a"
            )
            assert 30.0 == val(reg, "supervisord_process_backoff_seconds", group="g", name="b")
            clock.now += 60
            assert 0.0 == val(
                registry_for(state), "supervisord_process_backoff_seconds", group="g", name="b"
            )
        finally:
            worker.close()


class TestStatusPage:
    def test_a_held_process_shows_its_next_start(self):
        """The status page says when a held process starts again, and a failing probe."""
        from listeners.metrics.page import render_status_page
        from listeners.metrics.snapshot import ProcessView, Snapshot

        base = ProcessView("g", "a", "STOPPED", None, None, None, 0, 0, 0, None, 0, False)
        held = base._replace(backoff_seconds=40.0)
        failing = base._replace(name="b", state="RUNNING", probe_success=0)
        snap = Snapshot(True, "4.3", "sup", (held, failing), 0, 0, 0)
        page = render_status_page(snap, {}, "http://127.0.0.1:8080/")
        assert "next start in 40 s" in page
        assert "probe failing" in page
