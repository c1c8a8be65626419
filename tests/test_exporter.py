"""Unit tests for the exporter: state, collector, renderer, flags, web config, HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from listeners.core import bus, protocol
from listeners.core.background import Worker
from listeners.exporter import ExporterHandler, parse_args
from listeners.metrics.api import status_json
from listeners.metrics.page import render_status_page
from listeners.metrics.proc import ProcReader, sample
from listeners.metrics.render import Renderer, collector
from listeners.metrics.snapshot import ProcessView, Snapshot, Usage
from listeners.metrics.state import ExporterState
from listeners.metrics.web import load_web_config, make_server
from tests.fakes import FakeSupervisor

serial = iter(range(1, 1_000_000))


def ev(name: str, payload: str) -> protocol.Event:
    text = protocol.format_event(name, payload, serial=next(serial))
    head, _, body = text.partition("\n")
    return protocol.parse_event(protocol.parse_header(head), body)


#: The last state each test process was put in, so events carry a consistent from_state.
LAST: dict[str, str] = {}


def state_ev(
    group: str, name: str, state: str, from_state: str | None = None, **extra: Any
) -> protocol.Event:
    key = f"{group}:{name}"
    frm = from_state or LAST.get(key, "STOPPED")
    LAST[key] = state
    fields = " ".join(f"{k}:{v}" for k, v in extra.items())
    return ev(
        f"PROCESS_STATE_{state}",
        f"processname:{name} groupname:{group} from_state:{frm} {fields}".strip(),
    )


def info(group: str, name: str, state: str, pid: int = 0, exitstatus: int = 0) -> dict[str, Any]:
    return {
        "group": group,
        "name": name,
        "statename": state,
        "pid": pid,
        "start": 1_700_000_000 if pid else 0,
        "exitstatus": exitstatus,
    }


class FakeReader(ProcReader):
    """Usage by pid; asked to judge (memmon's measure), it answers ``judged[pid]``."""

    def __init__(
        self, usages: dict[int, Usage] | None = None, judged: dict[int, int] | None = None
    ) -> None:
        super().__init__()
        self.usages = usages or {}
        self.judged = judged or {}
        self.judges: list[tuple[int, tuple[str, bool] | None]] = []

    def usage(
        self, pid: int, judge: tuple[str, bool] | None = None, *, refresh: bool = False
    ) -> Usage | None:
        self.judges.append((pid, judge))
        usage = self.usages.get(pid)
        if usage is not None and judge is not None:
            return usage._replace(judged_bytes=self.judged.get(pid))
        return usage


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker("test")
    yield w
    w.close()


def make(
    worker: Worker, infos: list[dict[str, Any]] | None = None, **kw: Any
) -> tuple[ExporterState, ExporterHandler, FakeSupervisor]:
    LAST.clear()
    LAST.update({f"{i['group']}:{i['name']}": i["statename"] for i in infos or []})
    state = ExporterState(**kw)
    rpc = FakeSupervisor(infos)
    handler = ExporterHandler(state, rpc, worker)
    handler.request_reconcile()
    assert worker.join()
    return state, handler, rpc


def registry_for(state: ExporterState, reader: ProcReader | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector(lambda: sample(state, reader or FakeReader())))
    return registry


def val(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


class TestCollector:
    def test_initial_reconcile_sets_up_info_and_one_hot_state(self, worker):
        """After the start-up getAllProcessInfo: up 1, info 1, one state series at 1."""
        state, _, _ = make(worker, [info("web", "web_0", "RUNNING", pid=4242)])
        reg = registry_for(state)
        assert 1 == val(reg, "supervisord_up")
        assert 1 == val(reg, "supervisord_info", version="4.3.0", identification="host-a")
        assert 1 == val(
            reg, "supervisord_process_state", group="web", name="web_0", state="RUNNING"
        )
        assert 0 == val(reg, "supervisord_process_state", group="web", name="web_0", state="FATAL")
        assert 1_700_000_000 == val(
            reg, "supervisord_process_start_time_seconds", group="web", name="web_0"
        )

    def test_crashes_count_restarts_unexpected_exits_and_loop(self, worker):
        """Three unexpected exits and restarts: counters 3, crash_looping 1, exit status 3."""
        state, handler, rpc = make(worker, [info("app", "app", "RUNNING", pid=10)])
        for i in range(3):
            handler.handle(state_ev("app", "app", "EXITED", expected=0, pid=10 + i))
            handler.handle(state_ev("app", "app", "STARTING", tries=0))
            handler.handle(state_ev("app", "app", "RUNNING", pid=11 + i))
        rpc.infos = [info("app", "app", "EXITED", pid=0, exitstatus=3)]
        rpc.infos[0]["start"] = 1_700_000_000
        handler.handle(state_ev("app", "app", "EXITED", expected=0, pid=13))
        assert worker.join()
        reg = registry_for(state)
        labels = {"group": "app", "name": "app"}
        assert 3 == val(reg, "supervisord_process_restarts_total", **labels)
        assert 4 == val(reg, "supervisord_process_unexpected_exits_total", **labels)
        assert 1 == val(reg, "supervisord_process_crash_looping", **labels)
        assert 3 == val(reg, "supervisord_process_exit_status", **labels)
        assert 10 == val(reg, "supervisord_exporter_events_total")

    def test_a_respawned_process_keeps_its_last_exit_status(self, worker):
        """supervisord's 0 for a respawned process does not overwrite the last exit status."""
        state, handler, rpc = make(worker, [info("x", "x", "EXITED", exitstatus=3)])
        rpc.infos = [info("x", "x", "EXITED", exitstatus=3)]
        rpc.infos[0]["start"] = 1_700_000_000
        handler.on_timer()
        assert worker.join()
        rpc.infos = [info("x", "x", "RUNNING", pid=5, exitstatus=0)]
        handler.on_timer()
        assert worker.join()
        assert 3 == val(registry_for(state), "supervisord_process_exit_status", group="x", name="x")

    def test_exit_status_of_a_respawned_process_comes_from_supervisords_log(self, worker):
        """Respawned before the lookup (STARTING, status 0): the log's exit status 3 is used."""
        state, handler, rpc = make(worker, [info("w", "w", "RUNNING", pid=10)])
        rpc.infos = [info("w", "w", "STARTING", pid=0, exitstatus=0)]
        rpc.log = "INFO exited: w (exit status 3; not expected)\nINFO spawned: 'w' with pid 11\n"
        handler.handle(state_ev("w", "w", "EXITED", expected=0, pid=10))
        assert worker.join()
        assert 3 == val(registry_for(state), "supervisord_process_exit_status", group="w", name="w")

    def test_the_cause_of_a_respawned_crash_comes_from_the_log_too(self, worker):
        """Respawned (or held by health) before the lookup: the exit is counted under its
        status from supervisord's log, and the page's last exit says it, not 'unknown'."""
        state, handler, rpc = make(worker, [info("w", "w", "RUNNING", pid=10)])
        rpc.infos = [info("w", "w", "STARTING", pid=0, exitstatus=0)]
        rpc.log = "INFO exited: w (exit status 3; not expected)\nINFO spawned: 'w' with pid 11\n"
        handler.handle(state_ev("w", "w", "EXITED", expected=0, pid=10))
        assert worker.join()
        (view,) = [p for p in state.snapshot().processes if p.name == "w"]
        assert (view.exit_reason_text, view.exit_status) == ("exit status 3", 3)

    def test_a_respawned_crash_by_a_signal_is_counted_as_that_signal(self, worker):
        """The log says 'terminated by SIGKILL': the reason is the signal, not a status."""
        state, handler, rpc = make(worker, [info("w", "w", "RUNNING", pid=10)])
        rpc.infos = [info("w", "w", "STARTING", pid=0, exitstatus=0)]
        rpc.log = "INFO exited: w (terminated by SIGKILL; not expected)\n"
        handler.handle(state_ev("w", "w", "EXITED", expected=0, pid=10))
        assert worker.join()
        (view,) = [p for p in state.snapshot().processes if p.name == "w"]
        assert view.exit_reason_text is not None
        assert "SIGKILL" in view.exit_reason_text

    def test_a_failed_start_exports_the_status_of_the_log(self, worker):
        """BACKOFF (exit before startsecs, no EXITED event): exit status 7 from the log."""
        state, handler, rpc = make(worker, [info("f", "f", "STARTING", pid=9)])
        rpc.infos = [info("f", "f", "BACKOFF", pid=0, exitstatus=0)]
        rpc.log = "INFO exited: f (exit status 7; not expected)\n"
        handler.handle(state_ev("f", "f", "BACKOFF", tries=1))
        assert worker.join()
        assert 7 == val(registry_for(state), "supervisord_process_exit_status", group="f", name="f")

    def test_crashmails_delivery_health_on_the_bus_becomes_per_sink_metrics(self, worker):
        """A DeliveryHealth message: pending and failures per sink, in both renderers."""
        state, handler, _ = make(worker, [info("w", "w", "RUNNING", pid=10)])
        data = bus.encode(bus.DeliveryHealth("h", {"mail": 3, "file": 0}, {"mail": 7, "file": 0}))
        handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.CRASHMAIL_TYPE}\n{data}"))
        reg = registry_for(state)
        assert 3 == val(reg, "supervisor_listeners_alerts_pending", sink="mail")
        assert 7 == val(reg, "supervisor_listeners_alert_delivery_failures_total", sink="mail")
        text = Renderer().render(state.snapshot(), {})
        assert 'supervisor_listeners_alerts_pending{sink="mail"} 3\n' in text
        assert 'supervisor_listeners_alert_delivery_failures_total{sink="file"} 0\n' in text

    def test_expected_exits_are_not_crashes(self, worker):
        """EXITED expected:1 counts a restart but no unexpected exit and no loop."""
        state, handler, _ = make(worker, [info("q", "q", "RUNNING", pid=10)])
        for _ in range(5):
            handler.handle(state_ev("q", "q", "EXITED", expected=1, pid=10))
            handler.handle(state_ev("q", "q", "STARTING", tries=0))
        reg = registry_for(state)
        assert 0 == val(reg, "supervisord_process_unexpected_exits_total", group="q", name="q")
        assert 0 == val(reg, "supervisord_process_crash_looping", group="q", name="q")
        assert 5 == val(reg, "supervisord_process_restarts_total", group="q", name="q")

    def test_events_older_than_the_start_up_reconcile_count_nothing(self, worker):
        """A buffered STARTING replayed after the reconcile saw RUNNING is no restart."""
        state, handler, _ = make(worker, [info("s", "s", "RUNNING", pid=10)])
        handler.handle(state_ev("s", "s", "STARTING", from_state="STOPPED", tries=0))
        handler.handle(state_ev("s", "s", "RUNNING", from_state="STARTING", pid=10))
        reg = registry_for(state)
        assert 0 == val(reg, "supervisord_process_restarts_total", group="s", name="s")
        assert 1 == val(reg, "supervisord_process_state", group="s", name="s", state="RUNNING")

    def test_fatal_counted(self, worker):
        """BACKOFF x3 then FATAL: fatal_total 1, state FATAL, and no longer crash looping."""
        state, handler, _ = make(worker, [info("b", "b", "STOPPED")])
        handler.handle(state_ev("b", "b", "STARTING", tries=0))
        for n in range(3):
            handler.handle(state_ev("b", "b", "BACKOFF", tries=n))
        handler.handle(state_ev("b", "b", "FATAL"))
        reg = registry_for(state)
        assert 1 == val(reg, "supervisord_process_fatal_total", group="b", name="b")
        assert 1 == val(reg, "supervisord_process_state", group="b", name="b", state="FATAL")
        assert 0 == val(reg, "supervisord_process_crash_looping", group="b", name="b")

    def test_memmon_bus_messages_become_limit_and_memory_restarts(self, worker):
        """memmon's limits and restarts on the bus become the two memory series."""
        state, handler, _ = make(worker, [info("leak", "leak", "RUNNING", pid=5)])
        limits = bus.MemoryLimits(host="h", limits={"leak:leak": 16 << 20})
        restart = bus.MemoryRestart(
            host="h",
            group="leak",
            name="leak",
            pid=5,
            measured_bytes=20 << 20,
            limit_bytes=16 << 20,
            rule="leak",
        )
        dry = bus.MemoryRestart(**{**restart.__dict__, "dry_run": True})
        for msg in (limits, restart, restart, dry):
            handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\n{bus.encode(msg)}"))
        handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\nnot json"))
        reg = registry_for(state)
        labels = {"group": "leak", "name": "leak"}
        assert 16 << 20 == val(reg, "supervisord_process_memory_limit_bytes", **labels)
        assert 2 == val(reg, "supervisord_process_memory_restarts_total", **labels)

    def test_exits_are_counted_by_reason(self, worker):
        """Exits land under their cause: PHP memory_limit, signal, unknown status, on purpose."""
        state, handler, rpc = make(worker, [info("php", "php", "RUNNING", pid=10)])
        rpc.stderr["php:php"] = (
            "PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted (tried to"
            " allocate 2097152 bytes) in /app/w.php on line 4\n"
        )
        rpc.infos = [info("php", "php", "EXITED", exitstatus=255)]
        handler.handle(state_ev("php", "php", "EXITED", expected=0, pid=10))
        assert worker.join()
        rpc.stderr["php:php"] = "fine\n"
        for status in (-1, 3):
            rpc.infos = [info("php", "php", "EXITED", exitstatus=status)]
            handler.handle(state_ev("php", "php", "STARTING", tries=0))
            handler.handle(state_ev("php", "php", "RUNNING", pid=11))
            handler.handle(state_ev("php", "php", "EXITED", expected=0, pid=11))
            assert worker.join()
        handler.handle(state_ev("php", "php", "STARTING", tries=0))
        handler.handle(state_ev("php", "php", "RUNNING", pid=12))
        handler.handle(state_ev("php", "php", "EXITED", expected=1, pid=12))
        reg = registry_for(state)
        counts = {
            r: val(reg, "supervisord_process_exits_total", group="php", name="php", reason=r)
            for r in ("php_memory_limit", "signal", "exit_status", "expected", "oom_kill")
        }
        assert {
            "php_memory_limit": 1,
            "signal": 1,
            "exit_status": 1,
            "expected": 1,
            "oom_kill": None,
        } == counts
        view = state.snapshot().processes[0]
        assert ("expected", "exited on purpose") == (view.exit_reason, view.exit_reason_text)

    def test_memmon_restarts_are_exits_by_memmon(self, worker):
        """A memmon restart on the bus counts as an exit with reason memmon."""
        state, handler, _ = make(worker, [info("leak", "leak", "RUNNING", pid=5)])
        restart = bus.MemoryRestart(
            host="h", group="leak", name="leak", pid=5, measured_bytes=20 << 20,
            limit_bytes=16 << 20, rule="leak",
        )  # fmt: skip
        handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\n{bus.encode(restart)}"))
        reg = registry_for(state)
        assert 1 == val(
            reg, "supervisord_process_exits_total", group="leak", name="leak", reason="memmon"
        )

    def test_memory_and_cpu_come_from_the_reader_for_known_pids(self, worker):
        """Memory and CPU series exist for processes with a pid, from the reader."""
        state, _, _ = make(worker, [info("a", "a", "RUNNING", pid=7), info("b", "b", "STOPPED")])
        reg = registry_for(state, FakeReader({7: Usage(8 << 20, 1.5)}))
        assert 8 << 20 == val(reg, "supervisord_process_memory_bytes", group="a", name="a")
        assert 1.5 == val(reg, "supervisord_process_cpu_seconds_total", group="a", name="a")
        assert val(reg, "supervisord_process_memory_bytes", group="b", name="b") is None

    def test_memory_is_judged_the_way_memmon_announced_it_measures(self, worker):
        """memmon announced ``--measure pss`` and ceilings for a and c: the reader measures
        those two as memmon does; the ceiling is compared with that, not with the tree's RSS
        (an idle PHP worker: 17.5 MiB RSS, 4.4 MiB PSS under a 16 MiB ceiling)."""
        state, handler, _ = make(
            worker,
            [info(n, n, "RUNNING", pid=pid) for n, pid in (("a", 7), ("b", 8), ("c", 9))],
        )
        limits = bus.MemoryLimits("h", {"a:a": 16 << 20, "c:c": 16 << 20}, measure="pss")
        handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\n{bus.encode(limits)}"))
        idle, leak = int(17.5 * 2**20), 30 << 20
        reader = FakeReader(
            {7: Usage(idle, 1.0), 8: Usage(idle, 1.0), 9: Usage(leak, 1.0)},
            judged={7: int(4.4 * 2**20), 9: 20 << 20},
        )
        snap, usages = sample(state, reader)
        assert sorted(reader.judges) == [(7, ("pss", False)), (8, None), (9, ("pss", False))]
        reg = CollectorRegistry()
        reg.register(collector(lambda: (snap, usages)))
        judged = "supervisord_process_memory_judged_bytes"
        assert int(4.4 * 2**20) == val(reg, judged, group="a", name="a")
        assert val(reg, judged, group="b", name="b") is None
        assert idle == val(reg, "supervisord_process_memory_bytes", group="a", name="a")
        text = Renderer().render(snap, usages)
        assert f'{judged}{{group="c",name="c"}} {20 << 20}' in text
        doc = json.loads(status_json(snap, usages, now=0.0))
        assert 1 == doc["counts"]["over_ceiling"]
        row = {p["name"]: p for p in doc["processes"]}
        assert (row["a"]["over_ceiling"], row["c"]["over_ceiling"]) == (False, True)
        assert (row["a"]["memory_bytes"], row["a"]["memory_judged_bytes"]) == (
            idle,
            int(4.4 * 2**20),
        )
        assert row["a"]["headroom_bytes"] == (16 << 20) - int(4.4 * 2**20)

    def test_a_fatal_found_at_the_first_reconcile_gets_its_status_from_the_log(self, worker):
        """Started (or restarted) after a start failed with 7: getProcessInfo says 0 for a
        FATAL process, supervisord's log says 7; the exporter asks the log at once."""
        LAST.clear()
        state = ExporterState()
        rpc = FakeSupervisor(
            [info("nostart", "nostart", "FATAL")],
            answers={"supervisor.readLog": "INFO exited: nostart (exit status 7; not expected)\n"},
        )
        handler = ExporterHandler(state, rpc, worker)
        handler.request_reconcile()
        assert worker.join()
        assert worker.join()
        (view,) = state.snapshot().processes
        assert (view.state, view.exit_status) == ("FATAL", 7)

    def test_a_loop_held_by_health_stays_a_loop_a_stop_by_hand_ends_it(self, worker):
        """health stops the looping worker between tries (its Backoff came first): still
        crash-looping on the page; a STOPPED with no hold (supervisorctl stop) ends it."""
        state, handler, _ = make(worker, [info("app", "app", "RUNNING", pid=10)])
        for i in range(3):
            handler.handle(state_ev("app", "app", "EXITED", expected=0, pid=10 + i))
            handler.handle(state_ev("app", "app", "STARTING", tries=0))
            handler.handle(state_ev("app", "app", "RUNNING", pid=11 + i))
        hold = bus.Backoff("h", "app", "app", 3, 40.0, next_start=time.time() + 40)
        handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.HEALTH_TYPE}\n{bus.encode(hold)}"))
        handler.handle(state_ev("app", "app", "STOPPING", pid=13))
        handler.handle(state_ev("app", "app", "STOPPED", pid=13))
        (view,) = state.snapshot().processes
        assert view.crash_looping is True
        state.held_until.clear()  # the hold is over; now an operator stops it
        handler.handle(state_ev("app", "app", "STARTING", tries=0))
        handler.handle(state_ev("app", "app", "STOPPED", from_state="STARTING"))
        (view,) = state.snapshot().processes
        assert view.crash_looping is False

    def test_memmons_repeated_limits_restore_what_a_restarted_exporter_forgot(self, worker):
        """A fresh exporter (no RestartsExhausted seen): memmon's once-a-minute limits with
        its exhausted list bring back the ceiling and "memmon gave up"; a later list without
        the process clears it."""
        state, handler, _ = make(worker, [info("leak", "leak", "RUNNING", pid=7)])

        def announce(exhausted: list[str]) -> None:
            msg = bus.MemoryLimits("h", {"leak:leak": 16 << 20}, "pss", exhausted=exhausted)
            handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\n{bus.encode(msg)}"))

        announce(["leak:leak"])
        (view,) = state.snapshot().processes
        assert (view.memory_limit, view.memory_gave_up) == (16 << 20, True)
        announce([])
        (view,) = state.snapshot().processes
        assert view.memory_gave_up is False

    def test_unreachable_supervisord_sets_up_0_and_drops_process_series(self, worker):
        """A failed reconcile: up 0, reconcile_errors 1, no per-process series."""
        state, handler, rpc = make(worker, [info("a", "a", "RUNNING", pid=7)])
        rpc.down = True
        handler.on_timer()
        assert worker.join()
        reg = registry_for(state)
        assert 0 == val(reg, "supervisord_up")
        assert 1 == val(reg, "supervisord_exporter_reconcile_errors_total")
        assert val(reg, "supervisord_process_state", group="a", name="a", state="RUNNING") is None
        assert val(reg, "supervisord_info", version="4.3.0", identification="host-a") is None

    def test_reconcile_corrects_a_stale_state(self, worker):
        """A state missed while the exporter was away is fixed by the next reconcile."""
        state, handler, rpc = make(worker, [info("a", "a", "RUNNING", pid=7)])
        rpc.infos = [info("a", "a", "STOPPED"), info("new", "new", "RUNNING", pid=9)]
        handler.handle(ev("TICK_60", "when:1700000060"))
        assert worker.join()
        reg = registry_for(state)
        assert 1 == val(reg, "supervisord_process_state", group="a", name="a", state="STOPPED")
        assert 1 == val(reg, "supervisord_process_state", group="new", name="new", state="RUNNING")

    def test_tick_does_not_reconcile_when_an_interval_is_set(self, worker):
        """With --reconcile-interval, TICK_60 makes no RPC call (the timer does)."""
        state = ExporterState()
        rpc = FakeSupervisor()
        handler = ExporterHandler(state, rpc, worker, reconcile_interval=5.0)
        handler.handle(ev("TICK_60", "when:1700000060"))
        assert worker.join()
        assert [] == rpc.methods()

    def test_lost_events_are_counted_and_trigger_a_reconcile(self, worker):
        """A poolserial gap adds to lost_events_total and reconciles."""
        state, handler, rpc = make(worker)
        rpc.calls.clear()
        handler.on_events_lost(4, ev("TICK_5", "when:1"))
        assert worker.join()
        assert 4 == val(registry_for(state), "supervisord_exporter_lost_events_total")
        assert "all_process_info" in rpc.methods()

    def test_own_events_are_ignored(self, worker):
        """The exporter never reports itself."""
        state, handler, _ = make(worker, ignore=["exporter:exporter"])
        handler.handle(state_ev("exporter", "exporter", "RUNNING", pid=3))
        assert [] == list(state.snapshot().processes)

    def test_group_removed_drops_its_processes(self, worker):
        """PROCESS_GROUP_REMOVED removes the group's series."""
        state, handler, _ = make(worker, [info("g", "g_0", "STOPPED"), info("h", "h", "STOPPED")])
        handler.handle(ev("PROCESS_GROUP_REMOVED", "groupname:g\n"))
        assert ["h"] == [p.name for p in state.snapshot().processes]

    def test_supervisord_stopping_sets_up_0(self, worker):
        """SUPERVISOR_STATE_CHANGE_STOPPING marks supervisord down at once."""
        state, handler, _ = make(worker, [info("a", "a", "RUNNING", pid=7)])
        handler.handle(ev("SUPERVISOR_STATE_CHANGE_STOPPING", ""))
        assert 0 == val(registry_for(state), "supervisord_up")


def samples_of(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name != "supervisord_exporter_scrape_duration_seconds"
    }


NASTY = ProcessView(
    'we"ird\\grp', "<script>alert(1)</script>\nx", "FATAL", None, None, 3, 1, 2, 1, None, 0, True
)


def demo_snapshot(n: int = 50) -> tuple[Snapshot, dict[str, Usage]]:
    procs = [
        ProcessView(
            "w",
            f"w_{i}",
            "RUNNING" if i % 3 else "BACKOFF",
            100 + i,
            1.7e9 + i / 7,
            i % 4 or None,
            i,
            i // 2,
            i % 2,
            (16 << 20) if i % 2 else None,
            i % 3,
            i % 5 == 0,
            exits=(("expected", 2), ("php_memory_limit", i)) if i % 2 else (),
            memory_unreadable=i % 4 in (1, 2),
        )
        for i in range(n)
    ]
    procs.append(NASTY)
    procs.append(ProcessView("odd", "odd", "WEIRD", None, None, None, 0, 0, 0, None, 0, False))
    usages = {
        f"w:w_{i}": Usage(8_000_000 + i, i * 0.25, 3_000_000 + i if i % 4 == 0 else None)
        for i in range(0, n, 2)
    }
    unreadable = tuple(f"w:w_{i}" for i in range(n) if i % 4 in (1, 2))
    snap = Snapshot(True, "4.3.0", 'id "x"', tuple(procs), 7, 2, 1, memmon_unreadable=unreadable)
    return snap, usages


class TestRenderer:
    def test_fast_text_has_the_same_samples_as_the_prometheus_client_collector(self):
        """The hand-written exposition and the client_python collector agree sample by sample."""
        snap, usages = demo_snapshot()
        reg = CollectorRegistry()
        reg.register(collector(lambda: (snap, usages)))
        from prometheus_client import generate_latest

        expected = samples_of(generate_latest(reg).decode())
        actual = samples_of(Renderer().render(snap, usages))
        assert expected == actual
        assert len(actual) > 16 * 50

    def test_down_snapshot_renders_up_0_and_no_process_series(self):
        """supervisord_up 0 drops every per-process family."""
        snap, usages = demo_snapshot(3)
        text = Renderer().render(snap._replace(up=False), usages)
        assert "supervisord_up 0\n" in text
        assert "supervisord_process_" not in text

    def test_label_values_are_escaped(self):
        """Quotes, backslashes and newlines in names are escaped in label values."""
        text = Renderer().render(Snapshot(True, "4", "i", (NASTY,), 0, 0, 0), {})
        assert (
            'supervisord_process_restarts_total{group="we\\"ird\\\\grp",'
            'name="<script>alert(1)</script>\\nx"} 1\n'
        ) in text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        names = {s.labels.get("name") for s in fams["supervisord_process_fatal"].samples}
        assert {"<script>alert(1)</script>\nx"} == names

    def test_promtool_finds_no_problem(self):
        """promtool check metrics accepts the exposition, nasty names included."""
        snap, usages = demo_snapshot()
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=Renderer().render(snap, usages).encode(),
            capture_output=True,
            check=False,
        )
        assert (0, b"", b"") == (result.returncode, result.stdout, result.stderr)

    def test_cached_state_lines_follow_state_changes(self):
        """A process whose state changes renders its new state, not the cached one."""
        r = Renderer()
        p = ProcessView("g", "n", "RUNNING", None, None, None, 0, 0, 0, None, 0, False)
        r.render(Snapshot(True, "4", "i", (p,), 0, 0, 0), {})
        text = r.render(Snapshot(True, "4", "i", (p._replace(state="EXITED"),), 0, 0, 0), {})
        assert 'supervisord_process_state{group="g",name="n",state="EXITED"} 1\n' in text
        assert 'supervisord_process_state{group="g",name="n",state="RUNNING"} 0\n' in text


class TestStatusPage:
    def test_script_in_a_name_is_text(self):
        """A process named <script> is escaped, never markup."""
        snap, usages = demo_snapshot(2)
        page = render_status_page(snap, usages, 'http://127.0.0.1:8080/?a="b"')
        assert "<script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert 'href="http://127.0.0.1:8080/?a=&quot;b&quot;"' in page
        assert 'href="/metrics"' in page

    def test_the_last_exit_is_named_and_escaped(self):
        """The page names why a process last exited, its text escaped."""
        view = ProcessView(
            "php", "php", "EXITED", None, None, 255, 0, 1, 0, None, 0, False,
            exits=(("uncaught_exception", 1),), exit_reason="uncaught_exception",
            exit_reason_text="uncaught PHP exception: <b>boom</b>",
        )  # fmt: skip
        snap = Snapshot(True, "4.3.0", "x", (view,), 1, 0, 0)
        page = render_status_page(snap, {}, "http://127.0.0.1:8080/")
        assert "<th>last exit</th>" in page
        assert "uncaught PHP exception: &lt;b&gt;boom&lt;/b&gt;" in page

    def test_memory_bar_against_the_limit(self):
        """A process with a limit shows a bar at its percentage and 'used / limit'."""
        p = ProcessView("w", "w", "RUNNING", 5, None, None, 2, 0, 0, 16 << 20, 0, True)
        page = render_status_page(
            Snapshot(True, "4", "h", (p,), 0, 0, 0), {"w:w": Usage(8 << 20, 0)}, "http://x/"
        )
        assert 'style="width:50%"' in page
        assert "8.0MiB / 16.0MiB" in page
        assert "crash-looping" in page


class TestProcReader:
    def test_tree_memory_includes_children(self):
        """The usage of a process includes its child's memory; a gone pid gives None."""
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; b = bytearray(40 << 20); time.sleep(30)"]
        )
        try:
            reader = ProcReader()

            def grown() -> bool:
                u = reader.usage(child.pid)
                return u is not None and u.memory_bytes > 40 << 20

            deadline = time.monotonic() + 10
            while not grown() and time.monotonic() < deadline:
                time.sleep(0.05)
            own = reader.usage(os.getpid())
            assert own is not None
            assert grown()
            assert reader._stat(os.getpid()) is not None
            mine = reader._stat(os.getpid())
            assert mine is not None
            assert own.memory_bytes >= mine[0] * reader.page_size + (40 << 20)
        finally:
            child.kill()
            child.wait()
        assert reader.usage(child.pid) is None


class TestParseArgs:
    def test_defaults(self):
        """Defaults: 127.0.0.1:9876, dashboard on 8080, loop 3/5m, reconcile on TICK_60."""
        c = parse_args(["--server-url", "unix:///tmp/x.sock"])
        assert ("127.0.0.1", 9876) == (c.listen_host, c.listen_port)
        assert "http://127.0.0.1:8080/" == c.dashboard_url
        assert (3, 300.0) == c.loop
        assert c.reconcile_interval is None
        assert c.web_config_file is None

    def test_flags(self):
        """Every flag lands in the config."""
        c = parse_args(
            [
                "--server-url=unix:///tmp/x.sock",
                "--web.listen-address=[::1]:9000",
                "--web.config.file=web.yml",
                "--dashboard-url=https://dash.example/",
                "--loop=5/1h",
                "--reconcile-interval=2s",
            ]
        )
        assert ("::1", 9000) == (c.listen_host, c.listen_port)
        assert Path("web.yml") == c.web_config_file
        assert "https://dash.example/" == c.dashboard_url
        assert (5, 3600.0) == c.loop
        assert 2.0 == c.reconcile_interval

    @pytest.mark.parametrize(
        ("flag", "needle"),
        [
            ("--web.listen-address=9876", "invalid listen address '9876'"),
            ("--web.listen-address=::1:9876", "[::1]:9876"),
            ("--loop=3", "invalid rate '3'"),
            ("--dashboard-url=javascript:alert(1)", "invalid URL"),
            ("--reconcile-interval=0", "at least 0.1s"),
        ],
    )
    def test_bad_flags_exit_2_naming_the_value(self, flag, needle, capsys):
        """A bad flag is a usage error (exit 2) that names the value."""
        with pytest.raises(SystemExit) as exc:
            parse_args(["--server-url=unix:///tmp/x.sock", flag])
        assert 2 == exc.value.code
        assert needle in capsys.readouterr().err


CERT_CMD = [
    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem",
]  # fmt: skip


class TestWebConfig:
    def test_no_file_is_plain_http(self):
        """Without --web.config.file: no TLS, no auth."""
        c = load_web_config(None)
        assert (None, {}) == (c.tls, c.users)

    def test_tls_and_users(self, tmp_path):
        """tls_server_config paths are relative to the file; users keep their bcrypt hash."""
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        (tmp_path / "web.yml").write_text(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
            f"basic_auth_users:\n  prom: '{hashed}'\n"
        )
        c = load_web_config(tmp_path / "web.yml")
        assert c.tls is not None
        assert {"prom": hashed.encode()} == c.users

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("basic_auth_users:\n  prom: plaintext\n", "must be a bcrypt hash"),
            ("tls_server_config:\n  cert_file: c.pem\n", "needs cert_file and key_file"),
            ("tls_server_config:\n  cert_file: c\n  key_file: k\n", "cannot load"),
            ("nope: 1\n", "unsupported key 'nope'"),
            ("a: [\n", "not valid YAML"),
            ("- 1\n", "must be a mapping"),
        ],
    )
    def test_bad_config_says_what_is_wrong(self, tmp_path, text, needle):
        """A bad web config raises ValueError naming the problem."""
        (tmp_path / "web.yml").write_text(text)
        with pytest.raises(ValueError, match=r".*") as exc:
            load_web_config(tmp_path / "web.yml")
        assert needle in str(exc.value)


@pytest.fixture
def served(worker) -> Iterator[Any]:
    """An exporter HTTP server on a free port over a small state; yields a factory."""
    servers: list[Any] = []

    def start(web_config: Any = None) -> tuple[int, ExporterState, ExporterHandler]:
        state, handler, _ = make(
            worker, [info("w", "w_0", "RUNNING", pid=os.getpid()), info("s", "s", "STOPPED")]
        )
        server = make_server(
            "127.0.0.1",
            0,
            state=state,
            reader=ProcReader(),
            web_config=web_config or load_web_config(None),
            dashboard_url="http://127.0.0.1:8080/",
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], state, handler

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), body


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class TestHTTP:
    def test_metrics_healthz_and_status_page(self, served):
        """/metrics is the text format, /healthz ok, / HTML, anything else 404."""
        port, _, _ = served()
        status, ctype, body = get(port, "/metrics")
        assert (200, "text/plain; version=0.0.4; charset=utf-8") == (status, ctype)
        assert b'supervisord_process_state{group="w",name="w_0",state="RUNNING"} 1\n' in body
        assert b'supervisord_process_memory_bytes{group="w",name="w_0"} ' in body
        assert (200, b"ok\n") == (get(port, "/healthz")[0], get(port, "/healthz")[2])
        status, ctype, body = get(port, "/")
        assert (200, "text/html; charset=utf-8") == (status, ctype)
        assert b"w:w_0" in body
        assert 404 == get(port, "/nope")[0]

    def test_bad_requests_get_4xx(self, served):
        """Wrong method 405, body 413, huge request line 414, garbage 400."""
        port, _, _ = served()
        assert 405 == get(port, "/metrics", "POST")[0]
        assert 405 == get(port, "/metrics", "BREW")[0]
        assert raw(port, b"GET /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello").startswith(
            b"HTTP/1.0 413"
        )
        assert raw(port, b"GET /" + b"a" * 10000 + b" HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 414")
        assert raw(port, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.0 400")
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(95))
        assert raw(port, b"GET /metrics HTTP/1.0\r\n" + many + b"\r\n").startswith(b"HTTP/1.0 431")

    def test_a_slow_client_does_not_block_scrapes(self, served):
        """Clients that send half a request do not stop another scrape."""
        port, _, _ = served()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for s in idle:
            s.sendall(b"GET /metr")
        try:
            assert 200 == get(port, "/metrics")[0]
        finally:
            for s in idle:
                s.close()

    def test_basic_auth(self, served, tmp_path):
        """With basic_auth_users: no or wrong credentials 401, right ones 200."""
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
        port, _, _ = served(load_web_config(tmp_path / "web.yml"))

        def auth(pw: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"prom:{pw}".encode()).decode()}

        assert 401 == get(port, "/metrics")[0]
        assert 401 == get(port, "/metrics", headers=auth("wrong"))[0]
        assert 200 == get(port, "/metrics", headers=auth("s3cret"))[0]
        assert 200 == get(port, "/metrics", headers=auth("s3cret"))[0]

    def test_tls(self, served, tmp_path):
        """With tls_server_config the exporter speaks HTTPS."""
        import ssl

        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        (tmp_path / "web.yml").write_text(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        )
        port, _, _ = served(load_web_config(tmp_path / "web.yml"))
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert 200 == resp.status
        assert b"supervisord_up 1\n" in resp.read()
        conn.close()
