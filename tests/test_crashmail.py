"""crashmail's detection, flood control and flags, with a fake clock and a fake RPC object."""

from __future__ import annotations

import errno
import os

import pytest

from listeners.core import bus, protocol
from listeners.core.exits import exit_from_log
from listeners.core.supervisor import Connection
from listeners.core.wake import DeathWatch, Waker, pidfd_unavailable
from listeners.crashmail import (
    Config,
    CrashMail,
    make_waker,
    parse_args,
    parse_wake_interval,
)
from listeners.notify.alert import Alert, render_text
from listeners.notify.enrich import NO_LOG, enrich_alert
from listeners.notify.flood import FloodControl, fold
from listeners.notify.outbox import Outbox
from tests.fakes import FakeClock, FakeSupervisor, outbox_counts, run_listener


def state_event(state, name="w", group="g", serial=1, **fields):
    payload = f"processname:{name} groupname:{group} from_state:RUNNING"
    for key, value in fields.items():
        payload += f" {key}:{value}"
    header = protocol.parse_header(
        protocol.format_event(f"PROCESS_STATE_{state}", payload, serial=serial).split("\n")[0]
    )
    return protocol.parse_event(header, payload)


class Harness:
    def __init__(self, tmp_path, *, seeded=True, **config):
        self.clock = FakeClock()
        self.outbox = Outbox(str(tmp_path / "o.sqlite"), clock=self.clock)
        self.reconciles: list = []
        cfg = {"host": "h", "loop": (3, 60.0), "coalesce": 30.0, "burst": 5, **config}
        self.cm = CrashMail(
            Config(**cfg),
            self.outbox,
            clock=self.clock,
            boot="b",
            reconcile=self.reconciles.append,
            me="crashmail:crashmail",
        )
        if seeded:  # as after the start-up seed: later reads are the ones the tests ask for
            self.cm.resync.begin()
            self.cm.resync.done()
        self.serial = 0

    def send(self, state, name="w", group="g", **fields):
        self.serial += 1
        self.cm.handle(state_event(state, name, group, self.serial, **fields))

    def kinds(self, due=None):
        now = self.clock.now if due is None else due
        return [(i.alert.kind, i.alert.name) for i in self.outbox.due_incidents(now)]


class TestDetection:
    def test_an_unexpected_exit_is_one_crash_incident(self, tmp_path):
        """EXITED expected:0 is recorded at once as a crash."""
        h = Harness(tmp_path)
        h.send("EXITED", expected=0, pid=5)
        assert h.kinds() == [("crash", "w")]

    def test_expected_exits_are_never_alerts(self, tmp_path):
        """EXITED expected:1 records nothing, however often."""
        h = Harness(tmp_path)
        for _ in range(10):
            h.send("EXITED", expected=1, pid=5)
        assert h.kinds(due=10**12) == []

    def test_third_crash_in_the_window_starts_a_loop_and_stable_running_resolves_it(self, tmp_path):
        """3 exits in 60s: the first crash, one crash_loop (the batched repeat is absorbed);
        RUNNING for 60s gives one resolved."""
        h = Harness(tmp_path)
        for _ in range(3):
            h.send("EXITED", expected=0, pid=5)
            h.clock.now += 2
            h.send("RUNNING", pid=6)
        h.clock.now += 61
        h.cm.on_timer()
        kinds = [k for k, _ in h.kinds(due=10**12)]
        assert (
            kinds.count("crash"),
            kinds.count("crash_loop"),
            kinds.count("resolved"),
        ) == (1, 1, 1)

    def test_fatal_is_an_alert_and_running_again_resolves_it(self, tmp_path):
        """FATAL is recorded; the next RUNNING records a resolved for it."""
        h = Harness(tmp_path)
        h.send("FATAL")
        h.send("STARTING")
        h.send("RUNNING", pid=7)
        resolved = [i.alert for i in h.outbox.due_incidents(10**12) if i.alert.kind == "resolved"]
        assert (h.kinds()[:1], resolved[0].resolves) == ([("fatal", "w")], "fatal")

    def test_own_events_and_excluded_processes_are_ignored(self, tmp_path):
        """The listener never alerts on itself or on --exclude'd names."""
        h = Harness(tmp_path, exclude=("skip*",))
        h.send("EXITED", name="crashmail", group="crashmail", expected=0, pid=1)
        h.send("EXITED", name="skipme", expected=0, pid=1)
        assert h.kinds() == []

    def test_memmon_restarts_on_the_bus_are_alerts(self, tmp_path):
        """A MemoryRestart bus message becomes a memory_restart incident."""
        h = Harness(tmp_path)
        data = bus.encode(
            bus.MemoryRestart(
                host="h", group="g", name="w", pid=3, measured_bytes=20, limit_bytes=16, rule="g:*"
            )
        )
        payload = f"type:{bus.MEMMON_TYPE}\n{data}"
        line = protocol.format_event("REMOTE_COMMUNICATION", payload).split("\n")[0]
        h.cm.handle(protocol.parse_event(protocol.parse_header(line), payload))
        assert h.kinds() == [("memory_restart", "w")]

    def test_memmon_held_restarts_are_one_alert(self, tmp_path):
        """A RestartsHeld bus message becomes one restarts_held alert with memmon's sentence."""
        h = Harness(tmp_path)
        held = bus.RestartsHeld("h", "php", over=32, judged=32, median_bytes=19 << 20,
                                limit_bytes=16 << 20)  # fmt: skip
        payload = f"type:{bus.MEMMON_TYPE}\n{bus.encode(held)}"
        line = protocol.format_event("REMOTE_COMMUNICATION", payload).split("\n")[0]
        h.cm.handle(protocol.parse_event(protocol.parse_header(line), payload))
        assert h.kinds() == [("restarts_held", "")]

    def test_a_redelivered_event_records_nothing_new(self, tmp_path):
        """The same serial from the same supervisord gives the same key: recorded once."""
        h = Harness(tmp_path)
        h.cm.handle(state_event("EXITED", serial=9, expected=0, pid=5))
        h.cm.handle(state_event("EXITED", serial=9, expected=0, pid=5))
        assert len(h.kinds()) == 1


class TestLostEvents:
    def test_a_gap_reconciles_once_and_alerts_on_untold_processes_and_the_loss(self, tmp_path):
        """After a gap: one reconcile, a crash for an EXITED process we missed, one notice."""
        h = Harness(tmp_path)
        h.send("RUNNING", name="a", pid=1)
        h.send("RUNNING", name="b", pid=2)
        ev = state_event("RUNNING", name="c", serial=50, pid=3)
        h.cm.on_events_lost(40, ev)
        h.cm.on_events_lost(5, ev)
        h.clock.now += 2
        h.cm.on_timer()
        h.cm.on_timer()
        assert len(h.reconciles) == 1
        h.reconciles[0](
            [
                {"group": "g", "name": "a", "statename": "EXITED", "exitstatus": 3, "stop": 1},
                {"group": "g", "name": "b", "statename": "RUNNING", "exitstatus": 0},
                {"group": "g", "name": "d", "statename": "FATAL", "spawnerr": "no such file"},
            ]
        )
        h.cm.on_timer()
        alerts = {i.alert.kind: i.alert for i in h.outbox.due_incidents(10**12)}
        assert (3, "fatal" in alerts, 45) == (
            alerts["crash"].exit_status,
            True,
            alerts["events_lost"].count,
        )
        assert "raise buffer_size" in alerts["events_lost"].message.lower()

    def test_a_process_running_again_under_a_new_pid_is_named_in_the_notice(self, tmp_path):
        """A restart whose events were lost is named in the notice, not invented as a crash."""
        h = Harness(tmp_path)
        h.send("RUNNING", name="a", pid=1)
        h.send("RUNNING", name="b", pid=2)
        h.cm.on_events_lost(12, state_event("RUNNING", name="c", serial=30, pid=3))
        h.clock.now += 2
        h.cm.on_timer()
        h.reconciles[0](
            [
                {"group": "g", "name": "a", "statename": "RUNNING", "pid": 11},
                {"group": "g", "name": "b", "statename": "RUNNING", "pid": 2},
            ]
        )
        h.cm.on_timer()
        alerts = [i.alert for i in h.outbox.due_incidents(10**12)]
        assert ["events_lost"] == [a.kind for a in alerts]
        assert ("g:a",) == alerts[0].processes
        assert "restarted unseen" in alerts[0].message

    def test_an_event_that_arrives_after_the_reconcile_is_not_reported_twice(self, tmp_path):
        """A late EXITED for a process the reconcile reported adds no second crash."""
        h = Harness(tmp_path)
        h.cm.on_events_lost(3, state_event("RUNNING", serial=5))
        h.clock.now += 2
        h.cm.on_timer()
        h.reconciles[0]([{"group": "g", "name": "w", "statename": "EXITED", "exitstatus": 2}])
        h.cm.on_timer()
        h.send("EXITED", expected=0, pid=4)
        crashes = [i for i in h.outbox.due_incidents(10**12) if i.alert.kind == "crash"]
        assert len(crashes) == 1


class TestFloodControl:
    def test_first_crash_goes_now_repeats_join_one_batch(self):
        """A process's first alert is immediate; its repeats in the window share one batch."""
        fc = FloodControl(window=60, burst=5)
        a = [Alert(kind="crash", host="h", group="g", name="w", key=f"k{i}") for i in range(3)]
        (d0, b0), (d1, b1), (d2, b2) = (
            fc.schedule(a[0], 0),
            fc.schedule(a[1], 1),
            fc.schedule(a[2], 2),
        )
        assert (d0, b0, d1, d2) == (0, "k0", 61, 61)
        assert b1 == b2

    def test_a_storm_gives_burst_immediate_alerts_and_one_batch(self):
        """200 processes at once: 5 at once, 195 in a single batch (6 messages)."""
        fc = FloodControl(window=60, burst=5)
        plans = [
            fc.schedule(Alert(kind="crash", host="h", group="g", name=f"w{i}", key=f"k{i}"), 0)
            for i in range(200)
        ]
        assert len({batch for _, batch in plans}) == 6

    def test_after_the_window_a_process_alerts_at_once_again(self):
        """Past the window the next crash is a first crash again."""
        fc = FloodControl(window=60, burst=5)
        fc.schedule(Alert(kind="crash", host="h", group="g", name="w", key="a"), 0)
        assert fc.schedule(Alert(kind="crash", host="h", group="g", name="w", key="b"), 61) == (
            61,
            "b",
        )

    def test_fold_names_every_process_with_counts(self):
        """A summary lists every process and adds up repeats of the same process."""
        alerts = [
            Alert(kind="crash", host="h", group="g", name=n, key=f"k{i}", time=i)
            for i, n in enumerate(["a", "b", "a"])
        ]
        s = fold(alerts)
        assert (s.kind, s.processes, s.count) == ("summary", ("g:a", "g:b"), 3)
        assert "g:a: crash x2" in s.message

    def test_a_summary_says_when_and_the_latest_exit_status_in_time_order(self):
        """One line per process in the order they first failed, ISO 8601 UTC times (the span
        for repeats) and the latest exit status when the alerts carry one."""
        t0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
        alerts = [
            Alert(kind="crash", host="h", group="g", name="b", key="k2", time=t0 + 5),
            Alert(kind="crash", host="h", group="g", name="a", key="k1", time=t0, exit_status=3),
            Alert(
                kind="crash", host="h", group="g", name="a", key="k3", time=t0 + 70, exit_status=4
            ),
        ]
        assert fold(alerts).message.splitlines() == [
            "g:a: crash x2 from 2026-09-21T14:13:20Z to 2026-09-21T14:14:30Z (exit status 4)",
            "g:b: crash x1 at 2026-09-21T14:13:25Z",
        ]


def enrich_rpc(info, tail="line1\nline2\n", log="", no_file=False):
    """supervisord knowing one process g:w; no_file: it logs stderr nowhere tailable."""
    proc = {"group": "g", "name": "w", **info, "stderr_tail": None if no_file else tail}
    return FakeSupervisor([proc], answers={"supervisor.readLog": log})


class TestEnrich:
    def test_exit_status_and_stderr_tail_of_a_process_still_exited(self):
        """EXITED: exitstatus from getProcessInfo and the last lines of stderr."""
        alert = Alert(kind="crash", host="h", group="g", name="w", key="k")
        out = enrich_alert(alert, enrich_rpc({"statename": "EXITED", "exitstatus": 7}), 1)
        assert (out.exit_status, out.stderr_tail) == (7, "line2")

    def test_exit_status_of_a_restarted_process_comes_from_supervisords_log(self):
        """Once respawned (exitstatus cleared), the last `exited: w (exit status N` line wins."""
        log = (
            "exited: w (exit status 1; not expected)\nexited: x (exit status 9)\n"
            "exited: w (exit status 4; not expected)\n"
        )
        alert = Alert(kind="crash", host="h", group="g", name="w", key="k")
        out = enrich_alert(alert, enrich_rpc({"statename": "STARTING", "exitstatus": 0}, log=log))
        assert out.exit_status == 4

    def test_no_log_file_is_said_plainly(self):
        """A program without a stderr log file gets a sentence saying so."""
        alert = Alert(kind="crash", host="h", group="g", name="w", key="k")
        out = enrich_alert(alert, enrich_rpc({"statename": "EXITED"}, no_file=True))
        assert out.stderr_tail == NO_LOG

    def test_fatal_carries_the_spawn_error(self):
        """FATAL alerts include supervisord's spawnerr."""
        alert = Alert(kind="fatal", host="h", group="g", name="w", key="k")
        out = enrich_alert(
            alert, enrich_rpc({"statename": "FATAL", "spawnerr": "Exited too quickly"})
        )
        assert "spawnerr: Exited too quickly" in out.message

    def test_bad_exit_code_is_not_repeated_as_a_spawn_error(self):
        """supervisord's spawnerr 'Bad exit code 255' only restates the exit status: kept in
        the details for machines, not added to the text a person reads."""
        alert = Alert(kind="crash", host="h", group="g", name="w", key="k")
        info = {"statename": "EXITED", "exitstatus": 255, "spawnerr": "Bad exit code 255"}
        out = enrich_alert(alert, enrich_rpc(info))
        assert ("spawnerr" in out.message, out.details.get("spawnerr")) == (
            False,
            "Bad exit code 255",
        )

    def test_a_summarys_text_gets_the_exit_statuses_it_was_enriched_with(self):
        """The statuses looked up at delivery reach the summary's body, not only its details."""
        alerts = [
            Alert(kind="crash", host="h", group="g", name="w", key=f"k{i}", time=1e9 + i)
            for i in range(2)
        ]
        summary = fold(alerts)
        assert "exit status" not in summary.message
        out = enrich_alert(summary, enrich_rpc({"statename": "EXITED", "exitstatus": 7}))
        assert 7 == out.details["items"][0]["exit_status"]
        assert out.message.endswith("(exit status 7)"), out.message

    def test_a_stopped_note_gets_no_exit_status_or_cause(self):
        """The "stopped on purpose" note is no crash: no exit looked up, no Cause line."""
        note = Alert(
            kind="crash_loop", host="h", group="g", name="w", key="n", details={"note": "stopped"}
        )
        out = enrich_alert(note, enrich_rpc({"statename": "STOPPED", "exitstatus": 3}))
        assert out.exit_status is None
        assert "reason_text" not in out.details
        assert "Cause:" not in render_text(out)[1]

    def test_signal_deaths_are_recognised_in_the_log(self):
        """`terminated by SIGKILL` gives no status and names the signal."""
        assert exit_from_log("exited: w (terminated by SIGKILL; not expected)", "w") == (
            None,
            "terminated by SIGKILL",
        )


class TestFlags:
    def env(self, tmp_path):
        return {"XDG_STATE_HOME": str(tmp_path), "SUPERVISOR_SERVER_URL": "unix:///tmp/x.sock"}

    def test_superlance_flags_keep_their_meaning(self, tmp_path):
        """-p/-a/-o/-m/-s as in superlance: -m adds a sendmail sink through -s."""
        cfg = parse_args(
            ["-p", "g:w", "-a", "-o", "PROD", "-m", "ops@x", "-s", "/bin/cat"], self.env(tmp_path)
        )
        (sink,) = cfg.sinks
        assert (
            cfg.programs,
            cfg.any,
            cfg.optionalheader,
            sink.kind,
            sink.options["program"],
            sink.options["to"],
        ) == (("g:w",), True, "PROD", "sendmail", "/bin/cat", "ops@x")

    def test_defaults_are_a_file_sink_and_an_outbox_in_the_state_dir(self, tmp_path):
        """No sink flag: JSON lines file; outbox and file under $XDG_STATE_HOME."""
        cfg = parse_args([], self.env(tmp_path))
        assert (
            cfg.sinks[0].kind,
            cfg.outbox.startswith(str(tmp_path)),
            cfg.loop,
            cfg.coalesce,
        ) == ("file", True, (3, 300.0), 60.0)

    @pytest.mark.parametrize(
        "argv",
        [
            ["--loop", "3"],
            ["--coalesce", "soon"],
            ["--burst", "0"],
            ["--sink", "ftp://x"],
            ["--sink", "file:a", "--sink", "file:a"],
            ["--wake-interval", "10ms"],
            ["--wake-interval", "soon"],
        ],
    )
    def test_bad_flags_exit_2_naming_the_value(self, argv, tmp_path, capsys):
        """A bad value is a usage error (exit 2) before anything runs."""
        with pytest.raises(SystemExit) as exc:
            parse_args(argv, self.env(tmp_path))
        assert exc.value.code == 2
        assert argv[-1].split(":")[0] in capsys.readouterr().err

    def test_program_filters_accept_names_and_globs(self):
        """-p matches name, group:name or a glob; --exclude wins."""
        cfg = Config(programs=("web:*", "cron"), exclude=("web:w_9",))
        assert [
            cfg.watches("web", "w_1"),
            cfg.watches("cron", "cron"),
            cfg.watches("web", "w_9"),
            cfg.watches("db", "db"),
        ] == [True, True, False, False]


class TestWakeFlag:
    def env(self, tmp_path):
        return {"XDG_STATE_HOME": str(tmp_path), "SUPERVISOR_SERVER_URL": "unix:///tmp/x.sock"}

    @pytest.mark.parametrize(
        ("text", "seconds"), [("0", 0.0), ("200ms", 0.2), ("0.2", 0.2), ("0.5s", 0.5), ("1m", 60.0)]
    )
    def test_wake_interval_forms(self, text, seconds):
        """0 is off; milliseconds and the usual durations are accepted."""
        assert seconds == pytest.approx(parse_wake_interval(text))

    def test_the_wake_is_exit_triggered_by_default_with_a_200ms_fallback(self, tmp_path):
        """The default (chosen from bench/crashmail.py): poke when a process exits."""
        cfg = parse_args([], self.env(tmp_path))
        assert ("exit", 0.2) == (cfg.wake, cfg.wake_interval)

    @pytest.mark.parametrize(
        ("argv", "mode", "interval"),
        [
            (["--wake-interval", "0"], "off", 0.0),
            (["--wake-interval", "500ms"], "exit", 0.5),
            (["--wake", "interval"], "interval", 0.2),
            (["--wake", "interval", "--wake-interval", "1s"], "interval", 1.0),
            (["--wake", "off"], "off", 0.2),
            (["--wake", "exit", "--wake-interval", "0"], "exit", 0.0),
        ],
    )
    def test_wake_and_wake_interval_combine(self, argv, mode, interval, tmp_path):
        """--wake-interval 0 alone still means off; otherwise it is the interval (and fallback)."""
        cfg = parse_args(argv, self.env(tmp_path))
        assert (mode, interval) == (cfg.wake, pytest.approx(cfg.wake_interval))

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--wake", "sometimes"], "sometimes"),
            (["--wake", "interval", "--wake-interval", "0"], "--wake-interval 0"),
        ],
    )
    def test_bad_wake_combinations_exit_2(self, argv, named, tmp_path, capsys):
        """An unknown mode, or an interval wake of 0, is a usage error naming it."""
        with pytest.raises(SystemExit) as exc:
            parse_args(argv, self.env(tmp_path))
        assert (2, True) == (exc.value.code, named in capsys.readouterr().err)

    def test_each_mode_makes_its_thread(self):
        """off: none; interval: a Waker with a short timeout; exit: a DeathWatch."""
        conn = Connection(url="unix:///tmp/x.sock", timeout=10.0)
        off = make_waker(Config(wake="off"), conn)
        interval = make_waker(Config(wake="interval", wake_interval=0.3), conn)
        exit_ = make_waker(Config(wake="exit"), conn)
        try:
            assert isinstance(interval, Waker)
            assert (None, 0.3, True) == (off, interval.interval, isinstance(exit_, DeathWatch))
        finally:
            if isinstance(exit_, DeathWatch):
                exit_.stop()

    @pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM])
    def test_exit_falls_back_to_the_interval_without_pidfds(self, err, capsys):
        """pidfd_open failing (old kernel, seccomp): the interval wake runs, and says why."""

        def opener(pid: int) -> int:
            raise OSError(err, os.strerror(err))

        conn = Connection(url="unix:///tmp/x.sock", timeout=10.0)
        waker = make_waker(Config(wake="exit", wake_interval=0.5), conn, pidfd_open=opener)
        none = make_waker(Config(wake="exit", wake_interval=0.0), conn, pidfd_open=opener)
        logged = capsys.readouterr().err
        assert isinstance(waker, Waker)
        assert (0.5, None) == (waker.interval, none)
        assert ("crashmail.wake_fallback" in logged, os.strerror(err) in logged) == (True, True)


class TestWatchedPids:
    def test_running_gives_the_pid_and_exit_takes_it_away(self, tmp_path):
        """The wake thread learns each pid at RUNNING and forgets it at EXITED."""
        h = Harness(tmp_path)
        maps: list[dict[str, int]] = []
        h.cm.on_pids = maps.append
        h.cm.handle(state_event("RUNNING", name="w", pid=41))
        h.cm.handle(state_event("RUNNING", name="v", pid=42, serial=2))
        h.cm.handle(state_event("EXITED", name="w", pid=41, expected=0, serial=3))
        assert [{"g:w": 41}, {"g:w": 41, "g:v": 42}, {"g:v": 42}] == maps

    def test_events_that_do_not_change_a_pid_send_nothing(self, tmp_path):
        """STARTING after EXITED, BACKOFF: no pid either way, no new map."""
        h = Harness(tmp_path)
        maps: list[dict[str, int]] = []
        h.cm.on_pids = maps.append
        h.cm.handle(state_event("STARTING", name="w"))
        h.cm.handle(state_event("BACKOFF", name="w", serial=2))
        assert [] == maps

    def test_the_seed_gives_the_pids_of_watched_processes_only(self, tmp_path):
        """The first snapshot fills the map, without excluded processes or ourselves."""
        h = Harness(tmp_path, seeded=False, exclude=("g:skip",))
        maps: list[dict[str, int]] = []
        h.cm.on_pids = maps.append
        h.cm.start()
        infos = [
            {"group": "g", "name": "w", "statename": "RUNNING", "pid": 7},
            {"group": "g", "name": "skip", "statename": "RUNNING", "pid": 8},
            {"group": "g", "name": "s", "statename": "STOPPED", "pid": 0},
            {"group": "crashmail", "name": "crashmail", "statename": "RUNNING", "pid": 9},
        ]
        h.reconciles[0](infos)
        h.cm.on_timer()
        assert [{"g:w": 7}] == maps


class TestDeathWatchWiring:
    @pytest.mark.skipif(pidfd_unavailable() is not None, reason="no pidfds here")
    def test_a_running_event_then_the_kill_of_that_pid_pokes(self, tmp_path):
        """crashmail + DeathWatch: the pid from RUNNING is watched; killing it pokes."""
        import subprocess
        import threading

        poked = threading.Event()
        watch = DeathWatch(poked.set, repoke=0)
        h = Harness(tmp_path)
        h.cm.on_pids = watch.watch
        child = subprocess.Popen(["sleep", "60"])
        try:
            watch.start()
            h.cm.handle(state_event("RUNNING", name="w", pid=child.pid))
            child.kill()
            assert poked.wait(10.0)
        finally:
            child.kill()
            child.wait(10)
            watch.stop(5.0)
        assert 1 == watch.deaths


class TestLoop:
    def test_protocol_loop_acknowledges_after_the_commit(self, tmp_path):
        """Through the real protocol loop, an EXITED is in the outbox when OK is written."""
        h = Harness(tmp_path)
        payload = "processname:w groupname:g from_state:RUNNING expected:0 pid:3"
        code, out = run_listener(h.cm, protocol.format_event("PROCESS_STATE_EXITED", payload))
        assert 0 == code
        assert (out, h.kinds()) == ("READY\nRESULT 2\nOKREADY\n", [("crash", "w")])


class TestHangingSink:
    def test_256_crashes_are_acknowledged_while_the_only_sink_hangs(self, tmp_path):
        """With the sink blocked mid-send, all 256 events are acknowledged and committed."""
        import threading

        from listeners.notify.courier import Courier

        release = threading.Event()
        entered = threading.Event()

        class HangingSink:
            name = "smtp:hang"

            def send(self, alert):
                entered.set()
                release.wait(30)

        h = Harness(tmp_path, burst=1000)
        courier = Courier(h.outbox, [HangingSink()], fold=fold)
        h.cm.wake = courier.wake
        courier.start()
        try:
            frames = "".join(
                protocol.format_event(
                    "PROCESS_STATE_EXITED",
                    f"processname:w{i} groupname:g from_state:RUNNING expected:0 pid:{i + 10}",
                    serial=i + 1,
                )
                for i in range(256)
            )
            _, out = run_listener(h.cm, frames)
            assert entered.wait(10)
            acks = out.count("RESULT 2\nOK")
            counts = outbox_counts(h.outbox.path)
            incidents = counts["incidents_open"] + counts["messages"]
            assert (acks, incidents >= 256) == (256, True)
            assert not release.is_set()
        finally:
            release.set()
            courier.stop()
