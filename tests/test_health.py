"""supervisor-health and its kit: backoff schedule, guard, probes, watchdog rules, config."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listeners import crashmail, exporter, health, httpok, memmon, tasks
from listeners.core import bus
from listeners.core.inifile import IniError, parse_ini
from listeners.core.supervisor import BAD_NAME, RPCFault, SupervisorError
from listeners.watchdog.backoff import BackoffBook, Schedule
from listeners.watchdog.engine import Check, HttpokOptions, Watchdog, WatchdogConfig
from listeners.watchdog.guard import RestartGuard
from listeners.watchdog.probes import (
    CommandProbe,
    HttpProbe,
    Probe,
    ProbeResult,
    TcpProbe,
    run_probe,
)
from tests.fakes import FakeClock, FakeSupervisor, InlineWorker, make_event, state_event


class InlinePool:
    """ProbePool's interface: runs the probe at once with answers the test sets per URL."""

    def __init__(self) -> None:
        self.answers: dict[str, bool] = {}
        self.probed: list[str] = []

    def submit(self, key: str, probe: Probe, done: Any) -> bool:
        self.probed.append(key)
        ok = self.answers.get(key, True)
        done(key, ProbeResult(ok=ok, detail="ok" if ok else "status 500", seconds=0.0))
        return True

    def close(self) -> None:
        pass


def proc(name: str, state: str = "RUNNING", start: float = 0.0, group: str = "web") -> dict:
    return {"name": name, "group": group, "statename": state, "pid": 100, "start": start}


def make(
    checks: list[Check], clock: FakeClock, *, procs: list[dict] | None = None, **cfg: Any
) -> tuple[Watchdog, FakeSupervisor, InlinePool]:
    infos = procs if procs is not None else [proc("web_00")]
    fake = FakeSupervisor({f"{p['group']}:{p['name']}": dict(p) for p in infos})
    pool = InlinePool()
    config = WatchdogConfig(checks=tuple(checks), **{"grace": 0.0, **cfg})
    dog = Watchdog(config, fake, pool=pool, rpc=InlineWorker(), clock=clock, host="h")  # type: ignore[arg-type]
    dog.start(infos)
    return dog, fake, pool


def three_failing_under_a_2_per_minute_guard(clock: FakeClock) -> tuple[Watchdog, FakeSupervisor]:
    """Three web processes whose probe fails, mass guard 2/1m, after the first round."""
    check = Check("web", http="http://127.0.0.1:1/", failures=1, period=1)
    procs = [proc(f"web_0{i}") for i in range(3)]
    for i, p in enumerate(procs):
        p["pid"] = 100 + i
    dog, fake, pool = make([check], clock, procs=procs, mass_guard=(2, 60.0))
    pool.answers["GET http://127.0.0.1:1/"] = False
    dog.round()
    return dog, fake


def published(fake: FakeSupervisor) -> list[bus.Message]:
    return [bus.decode(a[1]) for m, a in fake.calls if m == "send_remote_comm"]


def restarts(fake: FakeSupervisor) -> list[str]:
    return [a[0] for m, a in fake.calls if m == "stop"]


class TestSchedule:
    def test_delays_double_from_base_to_cap(self):
        """The n-th crash in a row waits base * 2**(n-1), never more than the cap."""
        s = Schedule(base=10, cap=300, reset_after=600)
        assert [10, 20, 40, 80, 160, 300, 300] == [s.delay(n) for n in range(1, 8)]

    def test_a_huge_count_does_not_overflow(self):
        """A process that crashed a million times still waits the cap."""
        assert 300 == Schedule(10, 300, 600).delay(10**6)

    def test_a_cap_below_the_base_is_refused(self):
        """base > cap is a user mistake with a message naming both."""
        with pytest.raises(ValueError, match="base"):
            Schedule(base=60, cap=10)


class TestBackoffBook:
    def test_crashes_grow_the_delay_and_a_stable_run_resets_it(self):
        """Crashes in a row double the wait; a run of reset_after forgets them."""
        book = BackoffBook(Schedule(1, 60, 100))
        assert 1 == book.failed("g:a", 0).delay
        assert 2 == book.failed("g:a", 1).delay
        book.running("g:a", 5)
        assert 4 == book.failed("g:a", 50).delay  # ran 45 s only
        book.running("g:a", 60)
        assert 1 == book.failed("g:a", 200).delay  # ran 140 s: stable

    def test_due_returns_each_wait_once(self):
        """A wait that is over is handed out once, then the process is no longer held."""
        book = BackoffBook(Schedule(10, 60, 100))
        book.failed("g:a", 0)
        assert book.held("g:a", 5)
        assert [] == book.due(5)
        assert ["g:a"] == book.due(10)
        assert [] == book.due(11)
        assert not book.held("g:a", 11)

    def test_state_survives_a_new_book_on_the_same_file(self, tmp_path: Path):
        """The listener's restart keeps the count and the next start (state in a file)."""
        path = str(tmp_path / "state" / "b.json")
        book = BackoffBook(Schedule(10, 60, 100), path)
        book.failed("g:a", 0)
        book.failed("g:a", 1)
        again = BackoffBook(Schedule(10, 60, 100), path)
        assert 2 == again.holds["g:a"].failures
        assert again.held("g:a", 20)
        assert 40 == again.failed("g:a", 30).delay

    def test_a_state_file_that_cannot_be_written_keeps_the_holds_in_memory(
        self, tmp_path: Path, capsys
    ):
        """--state-dir under a file (or a full disk): no exception into the event loop, one
        error line naming the path, the backoff goes on from memory; once the directory can be
        written, the next change writes everything and says so."""
        blocker = tmp_path / "state"
        blocker.write_text("a file where the directory should be")
        path = str(blocker / "b.json")
        book = BackoffBook(Schedule(10, 60, 100), path)
        book.failed("g:a", 0)
        book.failed("g:a", 1)
        assert (2, True) == (book.holds["g:a"].failures, book.held("g:a", 20))
        assert book.write_error is not None
        err = capsys.readouterr().err
        assert 1 == err.count("health.state_write_failed")
        assert path in err
        blocker.unlink()
        book.failed("g:b", 2)
        assert book.write_error is None
        assert "health.state_written" in capsys.readouterr().err
        again = BackoffBook(Schedule(10, 60, 100), path)
        assert {"g:a": 2, "g:b": 1} == {n: h.failures for n, h in again.holds.items()}

    def test_a_damaged_file_starts_afresh(self, tmp_path: Path, capsys):
        """A file that is not JSON loses the counts instead of stopping the listener."""
        path = tmp_path / "b.json"
        path.write_text("{not json")
        assert {} == BackoffBook(Schedule(), str(path)).holds
        assert "health.state_unreadable" in capsys.readouterr().err


class TestGuard:
    def test_grace_spares_a_young_process(self):
        """A process younger than the grace is never restarted."""
        guard = RestartGuard(grace=30)
        assert "grace" == guard.allow("g:a", 100, running_since=80)
        assert "restart" == guard.allow("g:a", 100, running_since=60)

    def test_per_process_limit_then_exhausted(self):
        """After count restarts in the window, the process is only reported."""
        guard = RestartGuard(per_process=(2, 60))
        assert ["restart", "restart", "exhausted"] == [
            guard.allow("g:a", t, None) for t in (0, 1, 2)
        ]
        assert "restart" == guard.allow("g:a", 61, None)

    def test_mass_guard_stops_every_restart(self):
        """Many processes failing at once: past the mass limit nothing more is restarted."""
        guard = RestartGuard(mass=(3, 60))
        got = [guard.allow(f"g:{i}", 10, None) for i in range(5)]
        assert ["restart"] * 3 + ["guarded"] * 2 == got
        assert "restart" == guard.allow("g:9", 71, None)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"all good"

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server():
    class H(_Handler):
        pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, H
    srv.shutdown()


class TestProbes:
    def test_http_status_and_body(self, server):
        """An HTTP probe passes on an expected status with the text, fails otherwise."""
        srv, handler = server
        url = f"http://127.0.0.1:{srv.server_address[1]}/health"
        assert run_probe(HttpProbe(url, body="good", timeout=2)).ok
        assert not run_probe(HttpProbe(url, body="ready", timeout=2)).ok
        handler.status = 500
        result = run_probe(HttpProbe(url, timeout=2))
        assert not result.ok
        assert "status 500" in result.detail

    def test_tcp_connect(self, server):
        """A TCP probe passes when the port accepts and fails when nothing listens."""
        srv, _ = server
        assert run_probe(TcpProbe("127.0.0.1", srv.server_address[1], timeout=2)).ok
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        assert not run_probe(TcpProbe("127.0.0.1", closed, timeout=2)).ok

    def test_command_exit_status_and_deadline(self):
        """A command passes on exit 0, fails on another status and when past its timeout."""
        assert run_probe(CommandProbe((sys.executable, "-c", "pass"), timeout=10)).ok
        bad = run_probe(CommandProbe((sys.executable, "-c", "raise SystemExit(3)"), timeout=10))
        assert not bad.ok
        assert "exit 3" in bad.detail
        slow = CommandProbe((sys.executable, "-c", "import time; time.sleep(5)"), timeout=0.3)
        assert "did not finish" in run_probe(slow).detail

    @pytest.mark.parametrize("stage", ["status", "body"])
    def test_a_trickling_answer_fails_at_the_deadline(self, stage):
        """One byte every 0.2 s never trips a per-read timeout; the probe's deadline ends it."""
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def trickle() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                if stage == "body":
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                while not stop.wait(0.2):
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        return

        threading.Thread(target=trickle, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/health"
        results: list = []
        probe = threading.Thread(
            target=lambda: results.append(run_probe(HttpProbe(url, body="ready", timeout=1)))
        )
        probe.start()
        probe.join(30)
        stop.set()
        listener.close()
        assert not probe.is_alive(), "the probe outlived its deadline by far"
        assert not results[0].ok
        assert "did not answer in full within 1 s" in results[0].detail

    def test_a_body_text_sent_in_pieces_is_found(self, server):
        """The body text is searched in the whole answer, however it arrives."""
        srv, handler = server
        handler.body = b"x" * 70000 + b" ready"
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        assert not run_probe(HttpProbe(url, body="ready", timeout=5)).ok, "past MAX_BODY"
        handler.body = b"y" * 30000 + b" ready " + b"z" * 30000
        assert run_probe(HttpProbe(url, body="ready", timeout=5)).ok

    def test_a_non_http_answer_fails_with_what_came(self):
        """A port that answers something else than HTTP fails, naming what it sent."""
        listener = socket.create_server(("127.0.0.1", 0))

        def banner() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

        threading.Thread(target=banner, daemon=True).start()
        result = run_probe(HttpProbe(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=5))
        listener.close()
        assert not result.ok
        assert "did not answer HTTP" in result.detail
        assert "SSH-2.0" in result.detail

    def test_a_bad_url_is_refused(self):
        """Only http:// and https:// URLs make probes."""
        with pytest.raises(ValueError, match="not an http"):
            HttpProbe("ftp://x/")


class TestResync:
    def test_lost_events_are_answered_by_one_read_once_they_settle(self):
        """A stop whose events were lost: the read after the gap ends the probing of it."""
        clock = FakeClock()
        dog, fake, pool = make([Check("*", http="http://127.0.0.1:1/", period=1)], clock)
        fake.processes["web:web_00"]["statename"] = "STOPPED"
        dog.on_events_lost(3, state_event("RUNNING", "web_01", "web"))
        dog.on_timer()
        assert "all_process_info" not in fake.methods(), "read before the storm settled"
        clock.now += 1.5
        dog.on_timer()
        assert 1 == fake.methods().count("all_process_info")
        assert "STOPPED" == dog.watches["web:web_00"].state
        probed = len(pool.probed)
        for _ in range(5):
            clock.now += 1
            dog.on_timer()
        assert probed == len(pool.probed), "a stopped process is not probed"
        assert 1 == fake.methods().count("all_process_info")

    def test_an_hourly_read_catches_what_no_event_said(self):
        """With no gap at all, the safety read still comes once an hour."""
        clock = FakeClock()
        dog, fake, _ = make([Check("*", http="http://127.0.0.1:1/", period=60)], clock)
        clock.now += 3599
        dog.on_timer()
        assert "all_process_info" not in fake.methods()
        clock.now += 1
        dog.on_timer()
        assert 1 == fake.methods().count("all_process_info")


class TestWatchdogProbes:
    def test_restart_after_the_failure_threshold(self):
        """Three failed probes in a row restart the process once and announce it as hung."""
        clock = FakeClock()
        check = Check("web", http="http://127.0.0.1:1/", failures=3, period=1)
        dog, fake, pool = make([check], clock)
        pool.answers["GET http://127.0.0.1:1/"] = False
        for _ in range(2):
            dog.round()
            clock.now += 1
        assert [] == restarts(fake)
        dog.round()
        assert ["web:web_00"] == restarts(fake)
        hung = [m for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert [("web_00", "probe", "restart")] == [(m.name, m.reason, m.action) for m in hung]

    def test_max_restarts_then_only_reported_as_exhausted(self):
        """max-restarts 2/1h: two restarts, then the third failure spell is announced as
        exhausted and restarts nothing."""
        clock = FakeClock()
        check = Check("web", http="http://127.0.0.1:1/", failures=1, period=1)
        dog, fake, pool = make([check], clock, max_restarts=(2, 3600.0))
        pool.answers["GET http://127.0.0.1:1/"] = False
        for pid in (101, 102, 103):
            dog.round()
            clock.now += 1
            # the restart went through: a new run of the same process, still failing
            dog.handle(state_event("STOPPED", "web_00", "web"))
            dog.handle(state_event("STARTING", "web_00", "web"))
            dog.handle(state_event("RUNNING", "web_00", "web", pid=pid))
        assert ["web:web_00", "web:web_00"] == restarts(fake)
        hung = [m.action for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert ["restart", "restart", "exhausted"] == hung

    def test_the_mass_guard_holds_restarts_when_many_fail_at_once(self):
        """mass-guard 2/1m: two processes restarted, the third failing at the same time is
        held (announced as guarded): a shared dependency, not three hung workers."""
        clock = FakeClock()
        _dog, fake = three_failing_under_a_2_per_minute_guard(clock)
        assert 2 == len(restarts(fake))
        hung = sorted(m.action for m in published(fake) if isinstance(m, bus.ProcessHung))
        assert ["guarded", "restart", "restart"] == hung

    def test_a_held_restart_is_done_once_the_guard_window_has_passed(self):
        """The guard holds, it does not forget: the third process, still failing after the
        window, is restarted then; while held its verdict is announced once, not per round."""
        clock = FakeClock()
        dog, fake = three_failing_under_a_2_per_minute_guard(clock)
        for _ in range(30):  # 30 s later: still inside the window
            clock.now += 1
            dog.round()
        assert 2 == len(restarts(fake))
        hung = [m.action for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert 1 == hung.count("guarded")
        for _ in range(40):  # past the window
            clock.now += 1
            dog.round()
        assert 3 == len(restarts(fake))
        assert "web:web_02" == restarts(fake)[-1]

    def test_a_heartbeat_that_resumes_and_stops_again_is_judged_again(self):
        """A silent worker is restarted; one that beat again after an alert-only verdict
        and falls silent once more gets a second verdict (it got none for the run)."""
        clock = FakeClock()
        check = Check("*", heartbeat=10, action="alert")
        dog, fake, _ = make([check], clock, procs=[proc("w", start=clock.now - 100)])
        clock.now += 1
        dog.round()
        dog.handle(
            make_event("PROCESS_COMMUNICATION_STDOUT", "processname:w groupname:web pid:100\nbeat")
        )
        clock.now += 11
        dog.round()
        hung = [m for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert 2 == len(hung), hung

    def test_a_healthy_process_is_never_restarted(self):
        """Probes that pass restart nothing, however many rounds."""
        clock = FakeClock()
        dog, fake, pool = make([Check("*", http="http://127.0.0.1:1/", period=1)], clock)
        for _ in range(20):
            dog.round()
            clock.now += 1
        assert 20 == len(pool.probed)
        assert [] == restarts(fake)

    def test_initial_delay_keeps_probes_off_a_starting_process(self):
        """No probe is judged within the initial delay after RUNNING."""
        clock = FakeClock()
        check = Check("*", http="http://127.0.0.1:1/", period=1, initial_delay=10, failures=1)
        dog, fake, pool = make([check], clock, procs=[proc("web_00", start=clock.now)])
        pool.answers["GET http://127.0.0.1:1/"] = False
        dog.round()
        assert [] == pool.probed
        clock.now += 11
        dog.round()
        assert ["web:web_00"] == restarts(fake)

    def test_grace_spares_a_process_that_just_started(self):
        """A failing probe on a process younger than the grace restarts nothing."""
        clock = FakeClock()
        check = Check("*", http="http://127.0.0.1:1/", period=1, failures=1)
        dog, fake, pool = make([check], clock, procs=[proc("web_00", start=clock.now)], grace=30)
        pool.answers["GET http://127.0.0.1:1/"] = False
        dog.round()
        assert [] == restarts(fake)
        clock.now += 31
        dog.round()
        assert ["web:web_00"] == restarts(fake)

    def test_alert_only_reports_once_and_restarts_nothing(self):
        """action=alert publishes one hung message per failure spell, no restart."""
        clock = FakeClock()
        check = Check("*", http="http://127.0.0.1:1/", period=1, failures=1, action="alert")
        dog, fake, pool = make([check], clock)
        pool.answers["GET http://127.0.0.1:1/"] = False
        for _ in range(3):
            dog.round()
            clock.now += 1
        assert [] == restarts(fake)
        hung = [m for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert ["alert"] == [m.action for m in hung]

    def test_placeholders_give_each_process_its_own_probe(self):
        """{process_num} in a URL makes one probe per process."""
        clock = FakeClock()
        check = Check("*", http="http://127.0.0.1:90{process_num:02d}/", period=1)
        dog, _, pool = make([check], clock, procs=[proc("web_00"), proc("web_07")])
        dog.round()
        assert ["GET http://127.0.0.1:9000/", "GET http://127.0.0.1:9007/"] == sorted(pool.probed)


class TestWatchdogHeartbeats:
    def test_no_heartbeat_is_hung(self):
        """A process without a heartbeat for N is restarted and announced as hung."""
        clock = FakeClock()
        dog, fake, _ = make([Check("*", heartbeat=30)], clock, procs=[proc("w", start=1000)])
        clock.now += 20
        dog.handle(
            make_event("PROCESS_COMMUNICATION_STDOUT", "processname:w groupname:web pid:100\nbeat")
        )
        clock.now += 20
        dog.round()
        assert [] == restarts(fake)
        clock.now += 15
        dog.round()
        assert ["web:w"] == restarts(fake)
        hung = [m for m in published(fake) if isinstance(m, bus.ProcessHung)]
        assert ["heartbeat"] == [m.reason for m in hung]

    def test_heartbeat_text_ignores_other_output(self):
        """With heartbeat-text, plain log lines are not beats."""
        clock = FakeClock()
        check = Check("*", heartbeat=30, heartbeat_text="alive")
        dog, fake, _ = make([check], clock, procs=[proc("w", start=1000)])
        for _ in range(4):
            clock.now += 10
            dog.handle(
                make_event(
                    "PROCESS_LOG_STDOUT",
                    "processname:w groupname:web pid:100 channel:stdout\njob done",
                )
            )
            dog.round()
        assert ["web:w"] == restarts(fake)

    def test_stderr_is_output_but_no_heartbeat(self):
        """A worker that only writes errors to stderr is not beating: restarted at the
        heartbeat limit (stderr_events_enabled made every error line a beat before)."""
        clock = FakeClock()
        dog, fake, _ = make([Check("*", heartbeat=30)], clock, procs=[proc("w", start=1000)])
        for _ in range(4):
            clock.now += 10
            dog.handle(
                make_event(
                    "PROCESS_LOG_STDERR",
                    "processname:w groupname:web pid:100 channel:stderr\nerror: db down",
                )
            )
            dog.round()
        assert ["web:w"] == restarts(fake)

    def test_silence(self):
        """No output at all for the silence limit is a failure."""
        clock = FakeClock()
        dog, fake, _ = make([Check("*", silence=60)], clock, procs=[proc("w", start=1000)])
        clock.now += 59
        dog.round()
        assert [] == restarts(fake)
        clock.now += 2
        dog.round()
        assert ["web:w"] == restarts(fake)

    def test_status_carries_probe_and_heartbeat_age(self):
        """The bus status gives probe success and heartbeat age per process."""
        clock = FakeClock()
        checks = [Check("a", heartbeat=30), Check("b", http="http://127.0.0.1:1/")]
        dog, _, _ = make([*checks], clock, procs=[proc("a", start=990), proc("b", start=990)])
        dog.round()
        status = dog.status(clock.now)
        assert {"web:b": 1} == status.probe_success
        assert {"web:a": 10.0} == status.heartbeat_age


class TestWatchdogBackoff:
    def test_crash_holds_the_respawn_and_starts_after_the_delay(self):
        """An unexpected exit holds the autorestarted process, then starts it after the delay."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(10, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w")])
        dog.handle(state_event("EXITED", "w", "web", pid=100, expected=0))
        fake.processes["web:w"]["statename"] = "STARTING"
        dog.handle(state_event("STARTING", "w", "web", tries=0))
        assert ["web:w"] == restarts(fake)
        dog.handle(state_event("STOPPING", "w", "web"))
        dog.handle(state_event("STOPPED", "w", "web"))
        clock.now += 9
        dog.round()
        assert [] == [a for m, a in fake.calls if m == "start"]
        clock.now += 1
        dog.round()
        assert [("web:w",)] == [a for m, a in fake.calls if m == "start"]
        dog.handle(state_event("STARTING", "w", "web", tries=0))  # ours: not stopped
        assert ["web:w"] == restarts(fake)
        backoffs = [m for m in published(fake) if isinstance(m, bus.Backoff)]
        assert [10.0] == [m.delay_seconds for m in backoffs]

    def test_a_stop_still_under_way_when_the_hold_ends_is_waited_for(self):
        """Held, stopped, still STOPPING when the delay is over: started once it is STOPPED.

        supervisord loses a SIGTERM that reaches the respawned child before its exec: the
        worker runs on in STOPPING until it exits by itself. A start then would be a no-op
        ("already running") and leave the worker STOPPED for good.
        """
        clock = FakeClock()
        check = Check("*", backoff=Schedule(2, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w")])
        dog.handle(state_event("EXITED", "w", "web", pid=100, expected=0))
        dog.handle(state_event("STARTING", "w", "web", tries=0))
        assert ["web:w"] == restarts(fake)
        clock.now += 2.5
        dog.round()  # the hold is over, but the STOPPING event has not even come yet
        dog.handle(state_event("STOPPING", "w", "web"))
        clock.now += 1
        dog.round()
        assert [] == [a for m, a in fake.calls if m == "start"]
        # still STOPPING a second after the stop: the SIGTERM was lost, health sends it again
        assert [("web:w", "TERM")] == [a for m, a in fake.calls if m == "signal"]
        clock.now += 1
        dog.round()
        assert 1 == fake.methods().count("signal")  # once
        dog.handle(state_event("STOPPED", "w", "web"))
        assert [("web:w",)] == [a for m, a in fake.calls if m == "start"]
        dog.handle(state_event("STARTING", "w", "web", tries=0))  # ours: not stopped again
        assert ["web:w"] == restarts(fake)

    def test_a_respawn_running_before_our_stop_lands_is_still_started_after_the_hold(self):
        """startsecs=0: supervisord's respawn reports RUNNING before health's stop of it
        lands. That RUNNING is no run: the hold stays and the process is started when it is
        over (it stayed STOPPED for good)."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(5, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w")])
        dog.handle(state_event("EXITED", "w", "web", pid=100, expected=0))
        dog.handle(state_event("STARTING", "w", "web", tries=0))
        assert ["web:w"] == restarts(fake)  # health stops the respawn
        dog.handle(state_event("RUNNING", "w", "web", pid=101))  # before the stop lands
        dog.handle(state_event("STOPPING", "w", "web", pid=101))
        dog.handle(state_event("STOPPED", "w", "web", pid=101))
        fake.processes["web:w"]["statename"] = "STOPPED"
        clock.now += 5
        dog.round()
        assert [("web:w",)] == [a for m, a in fake.calls if m == "start"]

    def test_a_stop_that_takes_is_not_repeated(self):
        """A held process that reaches STOPPED in time gets no second SIGTERM."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(5, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w")])
        dog.handle(state_event("EXITED", "w", "web", pid=100, expected=0))
        dog.handle(state_event("STARTING", "w", "web", tries=0))
        dog.handle(state_event("STOPPING", "w", "web"))
        clock.now += 0.5
        dog.round()
        dog.handle(state_event("STOPPED", "w", "web"))
        clock.now += 2
        dog.round()
        assert "signal" not in fake.methods()

    def test_a_process_started_by_hand_during_the_hold_is_left_alone(self):
        """The hold ends while the process runs (an operator started it): no second start."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(2, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w", state="EXITED")])
        dog.handle(state_event("EXITED", "w", "web", pid=100, expected=0))
        dog.handle(state_event("RUNNING", "w", "web", pid=101))
        clock.now += 3
        dog.round()
        assert [] == [a for m, a in fake.calls if m == "start"]

    def test_a_start_that_fails_is_tried_again_after_the_delay(self):
        """supervisord cannot be reached when the hold ends: the process is held again for its
        delay and started then, not left stopped for good; a removed process is not retried."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(10, 60, 100), revive_fatal=True)
        dog, fake, _ = make([check], clock, procs=[proc("w", state="BACKOFF")])
        dog.handle(state_event("FATAL", "w", "web"))
        fake.fail["start"] = SupervisorError("cannot reach supervisord at unix:///x: refused")
        clock.now += 10
        dog.round()
        assert 1 == fake.methods().count("start")
        assert dog.book.held("web:w", clock.now + 9.9)
        del fake.fail["start"]
        clock.now += 9
        dog.round()
        assert 1 == fake.methods().count("start")
        clock.now += 1
        dog.round()
        assert 2 == fake.methods().count("start")
        # a group removed meanwhile (BAD_NAME): given up, not retried
        dog.handle(state_event("FATAL", "w", "web"))
        fake.fail["start"] = RPCFault(BAD_NAME, "BAD_NAME: web:w", "supervisor.startProcess")
        clock.now += 100
        dog.round()
        calls = fake.methods().count("start")
        clock.now += 100
        dog.round()
        assert (calls, False) == (fake.methods().count("start"), dog.book.held("web:w", clock.now))

    def test_without_revive_fatal_a_hold_ending_on_fatal_leaves_it_fatal(self):
        """backoff only: a held process that supervisord gave up on meanwhile (its retry count
        runs on across holds) stays FATAL when the hold ends, as documented."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(5, 60, 100), hold_crashes=True)
        dog, fake, _ = make([check], clock, procs=[proc("w")])
        dog.handle(state_event("BACKOFF", "w", "web"))
        dog.handle(state_event("STOPPED", "w", "web"))
        dog.handle(state_event("FATAL", "w", "web"))
        clock.now += 6
        dog.round()
        assert [] == [a for m, a in fake.calls if m == "start"]

    def test_a_process_already_fatal_when_health_starts_is_revived(self):
        """FATAL before health started (no event will say so): the first snapshot holds it
        and it is started after the delay, as one that went FATAL while watched."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(5, 60, 100), revive_fatal=True)
        dog, fake, _ = make([check], clock, procs=[proc("w", state="FATAL")])
        assert dog.book.held("web:w", clock.now + 4)
        clock.now += 5
        dog.round()
        assert [("web:w",)] == [a for m, a in fake.calls if m == "start"]

    def test_fatal_is_revived(self):
        """With revive_fatal, a FATAL process is started again after the backoff."""
        clock = FakeClock()
        check = Check("*", backoff=Schedule(5, 60, 100), revive_fatal=True)
        dog, fake, _ = make([check], clock, procs=[proc("w", state="BACKOFF")])
        dog.handle(state_event("FATAL", "w", "web"))
        clock.now += 5
        dog.round()
        assert [("web:w",)] == [a for m, a in fake.calls if m == "start"]

    def test_a_process_healthy_once_gets_no_grace(self):
        """The grace covers the startup phase: after one passed probe, a failure restarts."""
        clock = FakeClock()
        check = Check("*", http="http://127.0.0.1:1/", period=1, failures=1)
        dog, fake, pool = make([check], clock, procs=[proc("w", start=clock.now)], grace=30)
        dog.round()
        clock.now += 1
        pool.answers["GET http://127.0.0.1:1/"] = False
        dog.round()
        assert ["web:w"] == restarts(fake)

    def test_fatal_stays_without_revive(self):
        """Without revive_fatal a FATAL process is left alone."""
        clock = FakeClock()
        dog, fake, _ = make([Check("*", backoff=Schedule(5, 60, 100))], clock, procs=[proc("w")])
        dog.handle(state_event("FATAL", "w", "web"))
        clock.now += 100
        dog.round()
        assert [] == [a for m, a in fake.calls if m == "start"]


class TestIni:
    def test_sections_keys_and_lines(self):
        """Keys keep their line numbers; _ and - are the same in key names."""
        sections = parse_ini("# c\n[program:web]\nhttp = http://x/\ninitial_delay: 5s\n")
        assert {"http": 3, "initial-delay": 4} == sections[0].lines

    def test_inline_comments_end_a_value(self):
        """'; ...' after whitespace is a comment; a '#' inside a URL is not."""
        sections = parse_ini("[p]\ngrace = 30s ; why\nhttp = http://x/#top\n")
        assert {"grace": "30s", "http": "http://x/#top"} == sections[0].values

    def test_errors_name_the_line(self):
        """A line outside any form names its file and line."""
        with pytest.raises(IniError, match=r"f\.conf:2:"):
            parse_ini("[a]\nnonsense\n", "f.conf")


class TestConfig:
    def test_flags_make_one_check_per_program(self):
        """-p with a probe flag gives a check per pattern with the flag values."""
        config = health.parse_args(
            [
                "-p",
                "web",
                "-p",
                "api:*",
                "--http",
                "http://127.0.0.1:8000/",
                "--status",
                "204",
                "--failures",
                "2",
                "--period",
                "5s",
                "--server-url",
                "unix:///x.sock",
            ]
        )
        assert ["web", "api:*"] == [c.pattern for c in config.checks]
        assert (204,) == config.checks[0].statuses
        assert 2 == config.checks[0].failures
        assert 5.0 == config.checks[0].period

    def test_backoff_flags(self):
        """--backoff and --revive-fatal carry the schedule."""
        config = health.parse_args(
            [
                "-p",
                "w",
                "--backoff",
                "--backoff-base",
                "1s",
                "--backoff-cap",
                "8s",
                "--revive-fatal",
                "--server-url",
                "unix:///x.sock",
            ]
        )
        assert Schedule(1.0, 8.0, 600.0) == config.checks[0].backoff
        assert config.checks[0].revive_fatal

    def test_file_checks_and_settings(self, tmp_path: Path):
        """A file gives per-program checks and [health] settings."""
        conf = tmp_path / "h.conf"
        conf.write_text(
            "[health]\ngrace = 1m\nmass-guard = off\n\n[program:web]\nhttp = http://127.0.0.1/\n"
            "status = 200, 204\n\n[program:queue]\nheartbeat = 2m\naction = alert\n"
        )
        config = health.parse_args(["--config", str(conf), "--server-url", "unix:///x.sock"])
        assert 60.0 == config.grace
        assert config.mass_guard is None
        assert ((200, 204), 120.0) == (config.checks[0].statuses, config.checks[1].heartbeat)
        assert "alert" == config.checks[1].action

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[program:web]\nhttp = http://x/\nperod = 5s\n", "h.conf:3: unknown key 'perod'"),
            (
                "[program:web]\n\nperiod = soon\nhttp = http://x/\n",
                "h.conf:3: [program:web] period",
            ),
            ("[program:web]\nhttp = http://x/\ntcp = x:1\n", "one probe per check"),
            ("[worker:x]\nhttp = http://x/\n", "h.conf:1: unknown section"),
            ("[program:web]\nfailures = 3\n", "nothing to watch"),
            ("[program:web]\nhttp = http://x:{port}/\n", "unknown placeholder"),
            ("[program:web]\nheartbeat = 0\n", "heartbeat must be greater than zero"),
            ("[program:web]\ncommand = /nonexistent/probe\n", "not an executable program"),
            ("[health]\n\ngrace = soon\n", "h.conf:3: [health] grace: invalid duration 'soon'"),
            ("[health]\nmass-guard = 5\n", "h.conf:2: [health] mass-guard: invalid rate '5'"),
            ("[health]\nmax-restarts = x/1h\n", "h.conf:2: [health] max-restarts"),
            (
                "[program:web]\nhttp = http://x/\nbackoff-cap = 1m\n",
                "h.conf:3: [program:web] backoff-cap: set, but neither backoff nor revive-fatal",
            ),
        ],
    )
    def test_file_errors_are_one_line_with_the_line_number(self, tmp_path, capsys, text, expected):
        """A bad file stops the start with a usage error naming the line and the mistake."""
        conf = tmp_path / "h.conf"
        conf.write_text(text)
        with pytest.raises(SystemExit):
            health.parse_args(["--config", str(conf), "--server-url", "unix:///x.sock"])
        err = capsys.readouterr().err
        assert expected in err.replace(str(tmp_path) + "/", "")
        assert "Traceback" not in err

    def test_backoff_tuning_without_backoff_is_refused(self, capsys):
        """--backoff-cap alone would be ignored: refused, naming the flag that is missing."""
        with pytest.raises(SystemExit):
            health.parse_args(
                ["-p", "web", "--http", "http://x/", "--backoff-cap", "1m",
                 "--server-url", "unix:///x.sock"]
            )  # fmt: skip
        assert "--backoff-cap does nothing without --backoff" in capsys.readouterr().err

    def test_probe_flags_without_program_are_refused(self, capsys):
        """--http without -p says which flag is missing."""
        with pytest.raises(SystemExit):
            health.parse_args(["--http", "http://x/", "--server-url", "unix:///x.sock"])
        assert "-p PATTERN" in capsys.readouterr().err


class TestHttpokFlags:
    def test_superlance_command_line(self, monkeypatch):
        """Every superlance httpok flag is accepted with its meaning."""
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///x.sock")
        config = httpok.parse_args(
            [
                "-p",
                "web_00",
                "-p",
                "api:api_01",
                "-t",
                "3",
                "-c",
                "200",
                "-c",
                "204",
                "-b",
                "ok",
                "-m",
                "ops@example.com",
                "-s",
                "/bin/cat",
                "-g",
                "/bin/true",
                "-d",
                "/tmp",
                "-E",
                "-n",
                "front",
                "http://127.0.0.1:8000/health",
            ]
        )
        assert ["web_00", "api:api_01"] == [c.pattern for c in config.checks]
        first = config.checks[0]
        assert (first.timeout, first.statuses, first.body) == (3.0, (200, 204), "ok")
        assert (
            HttpokOptions("ops@example.com", "/bin/cat", "/bin/true", "/tmp", False, "front")
            == config.httpok
        )
        assert 30.0 == config.grace

    def test_any_and_long_options(self, monkeypatch):
        """-a watches every process; long options work as in superlance."""
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///x.sock")
        config = httpok.parse_args(["--any", "--timeout=5", "--eager", "http://x/"])
        assert ["*"] == [c.pattern for c in config.checks]
        assert config.httpok is not None
        assert config.httpok.eager

    def test_clustered_short_flags_and_glued_values(self, monkeypatch):
        """superlance's getopt spellings still parse: -pNAME, -c204, -Ea, a --grace duration."""
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///x.sock")
        config = httpok.parse_args(["-pweb", "-c204", "-Ea", "--grace", "5s", "http://x/"])
        assert ["*"] == [c.pattern for c in config.checks]
        assert ((204,), 5.0) == (config.checks[0].statuses, config.grace)
        assert config.httpok is not None
        assert not config.httpok.eager

    def test_every_command_has_a_public_parser(self):
        """gen_reference builds every --help from a public build_parser(), httpok's included."""
        for module in (health, httpok, memmon, crashmail, exporter, tasks):
            assert module.build_parser().format_help().startswith("usage: supervisor-")

    @pytest.mark.parametrize(
        ("argv", "expected"),
        [
            (["-p", "x"], "exactly one URL"),
            (["http://x/"], "-p NAME"),
            (["-p", "x", "-t", "soon", "http://x/"], "-t soon"),
            (["-p", "x", "-c", "2000", "http://x/"], "-c 2000"),
            (["-p", "x", "ftp://x/"], "not an http"),
            (["-Z", "http://x/"], "option -Z"),
        ],
    )
    def test_mistakes_are_one_line(self, monkeypatch, capsys, argv, expected):
        """A bad httpok command line exits with one line naming the mistake."""
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///x.sock")
        with pytest.raises(SystemExit):
            httpok.parse_args(argv)
        err = capsys.readouterr().err
        assert expected in err
        assert 1 == len(err.strip().splitlines())

    def test_httpok_probes_on_tick_and_mails(self, tmp_path):
        """On TICK the URL is probed; a failure restarts the RUNNING process and sends mail."""
        out = tmp_path / "mail.txt"
        clock = FakeClock()
        check = Check("web_00", http="http://127.0.0.1:1/", failures=1, where="httpok")
        options = HttpokOptions(email="ops@example.com", sendmail=f"tee {out}")
        dog, fake, pool = make([check], clock, httpok=options)
        pool.answers["GET http://127.0.0.1:1/"] = False
        dog.handle(make_event("TICK_60", "when:1000"))
        assert ["web:web_00"] == restarts(fake)
        assert "Subject: httpok: http://127.0.0.1:1/: bad status" in out.read_text()

    def test_on_tick_alone_a_replacement_that_fails_too_is_restarted_after_its_grace(self):
        """events=TICK_60 only (superlance's setup): the restarted process is a new run, seen
        by polling. It gets the startup grace like a first start, and once past it, failing
        still, it is restarted again; before, one restart per failure spell was all."""
        clock = FakeClock()
        check = Check("web_00", http="http://127.0.0.1:1/", failures=1, where="httpok")
        dog, fake, pool = make(
            [check], clock, procs=[proc("web_00", start=clock.now - 100)], httpok=HttpokOptions()
        )
        dog.config = replace(dog.config, grace=30.0)
        dog.guard.grace = 30.0
        pool.answers["GET http://127.0.0.1:1/"] = True
        dog.handle(make_event("TICK_60", "when:1000"))  # healthy once: proven
        pool.answers["GET http://127.0.0.1:1/"] = False
        clock.now += 60
        dog.handle(make_event("TICK_60", "when:1060"))
        assert ["web:web_00"] == restarts(fake)
        # no STOPPED event comes on TICK alone: the restarter polls, finds it down, starts it
        fake.processes["web:web_00"]["statename"] = "STOPPED"
        clock.now += 2
        dog.round()
        assert [("stop", "web:web_00"), ("start", "web:web_00")] == fake.acts()
        fake.processes["web:web_00"].update(statename="RUNNING", pid=101, start=clock.now)
        clock.now += 5
        dog.handle(make_event("TICK_60", "when:1065"))
        assert ["web:web_00"] == restarts(fake)  # within its grace: left alone
        clock.now += 60
        dog.handle(make_event("TICK_60", "when:1125"))
        assert ["web:web_00", "web:web_00"] == restarts(fake)

    def test_not_eager_skips_the_probe_with_nothing_running(self):
        """-E: no watched process RUNNING means no probe."""
        clock = FakeClock()
        check = Check("web_00", http="http://127.0.0.1:1/", failures=1)
        dog, _, pool = make(
            [check],
            clock,
            procs=[proc("web_00", state="STOPPED")],
            httpok=HttpokOptions(eager=False),
        )
        dog.handle(make_event("TICK_60", "when:1000"))
        assert [] == pool.probed


def test_bus_messages_round_trip():
    """health's bus messages decode to what was encoded."""
    for m in (
        bus.ProcessHung(
            host="h", group="g", name="n", pid=1, reason="probe", detail="d", action="restart"
        ),
        bus.Backoff(host="h", group="g", name="n", failures=2, delay_seconds=20.0, next_start=5.5),
        bus.HealthStatus(
            host="h", probe_success={"g:n": 0}, heartbeat_age={"g:n": 3.5}, backoff_seconds={}
        ),
    ):
        assert m == bus.decode(bus.encode(m))
    with pytest.raises(ValueError, match="delay_seconds"):
        bus.decode(
            json.dumps(
                {
                    "v": 1,
                    "kind": "backoff",
                    "host": "h",
                    "group": "g",
                    "name": "n",
                    "failures": 1,
                    "delay_seconds": "x",
                    "next_start": 1,
                }
            )
        )


def test_the_documented_config_file_is_valid(tmp_path: Path):
    """The health.conf shown in docs/health.md loads as it stands."""
    doc = (Path(__file__).parents[1] / "docs" / "health.md").read_text()
    block = doc.split("# /etc/supervisor/health.conf\n", 1)[1].split("```", 1)[0]
    conf = tmp_path / "health.conf"
    conf.write_text(block)
    config = health.parse_args(["--config", str(conf), "--server-url", "unix:///x.sock"])
    assert ["api", "queue", "reports", "importer"] == [c.pattern for c in config.checks]
    assert (5, 600.0) == config.max_restarts


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]=:;# \nabcp0-_.\t")), max_size=200))
def test_the_ini_reader_fails_only_with_its_own_error(text: str):
    """Whatever the text, parse_ini returns sections or raises IniError naming a line."""
    error = ""
    sections = []
    try:
        sections = parse_ini(text, "f")
    except IniError as exc:
        error = str(exc)
    assert error.startswith("f:") if error else all(s.line >= 1 for s in sections)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**6))
def test_backoff_delay_stays_within_base_and_cap(failures: int):
    """Any failure count gives a delay of 0 (none yet) or between base and cap."""
    delay = Schedule(3, 90, 100).delay(failures)
    assert delay == 0 if failures == 0 else 3 <= delay <= 90
