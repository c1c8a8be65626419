"""crashmail's crash-loop incidents: one alert per problem, reminders, stop is not resolve."""

from __future__ import annotations

import pytest

from listeners.crashmail import CrashMail, main, parse_args
from listeners.notify.alert import Alert, collapse_repeats, duration_words, render_text, subject
from listeners.notify.enrich import enrich_alert
from listeners.notify.flood import fold
from listeners.notify.incident import STOP_NOTE_HOLD
from listeners.notify.outbox import Outbox, OutboxOwnerError
from tests.fakes import FakeClock
from tests.test_crashmail import Harness, enrich_rpc


def loop(h: Harness, exits: int = 3) -> None:
    for _ in range(exits):
        h.send("EXITED", expected=0, pid=5)
        h.clock.now += 2
        h.send("STARTING")
        h.send("RUNNING", pid=6)


def keep_looping(h: Harness, exits: int) -> None:
    """An open loop going on: an exit every 30 s, crashmail's timer after each."""
    for _ in range(exits):
        h.clock.now += 30
        h.send("EXITED", expected=0, pid=5)
        h.send("STARTING")
        h.cm.on_timer()


def failed_starts(h: Harness, n: int) -> None:
    """``n`` starts that fail before startsecs, a second apart."""
    for _ in range(n):
        h.send("STARTING")
        h.send("BACKOFF")
        h.clock.now += 1


def alerts(h: Harness) -> list[Alert]:
    return [i.alert for i in h.outbox.due_incidents(10**12)]


def restarted(h: Harness) -> CrashMail:
    """A new crashmail on the same outbox, as after a supervisord restart (another boot)."""
    return CrashMail(
        h.cm.config,
        h.outbox,
        clock=h.clock,
        boot="b2",
        reconcile=h.reconciles.append,
        me="crashmail:crashmail",
    )


class TestOneIncident:
    def test_crashes_after_the_loop_alert_are_counted_not_alerted(self, tmp_path):
        """After crash_loop, 20 more crashes over 10 minutes record nothing new."""
        h = Harness(tmp_path, repeat=3600.0)
        loop(h)
        before = len(alerts(h))
        for _ in range(20):
            h.clock.now += 28
            h.send("EXITED", expected=0, pid=5)
            h.send("STARTING")
            h.cm.on_timer()
        assert (before, [a.kind for a in alerts(h)]) == (2, ["crash", "crash_loop"])

    def test_with_group_wait_a_fast_loop_is_one_loop_alert_and_no_crash(self, tmp_path):
        """--group-wait 10s: three crashes 2 s apart give the loop alert only; the first
        crash's alert, still waiting, is absorbed into it."""
        h = Harness(tmp_path, group_wait=10.0)
        loop(h)
        assert ["crash_loop"] == [a.kind for a in alerts(h)]

    def test_with_group_wait_a_lone_crash_is_sent_after_the_wait(self, tmp_path):
        """--group-wait 10s: a crash that no loop follows is due 10 s after it, not before."""
        h = Harness(tmp_path, group_wait=10.0)
        h.send("EXITED", expected=0, pid=5)
        crashed = h.clock.now
        assert [] == [i.alert.kind for i in h.outbox.due_incidents(crashed + 9.9)]
        assert ["crash"] == [i.alert.kind for i in h.outbox.due_incidents(crashed + 10)]

    def test_without_group_wait_the_first_crash_goes_at_once(self, tmp_path):
        """The default (0): the first crash is due at once and the loop alert follows it."""
        h = Harness(tmp_path)
        h.send("EXITED", expected=0, pid=5)
        assert ["crash"] == [i.alert.kind for i in h.outbox.due_incidents(h.clock.now)]
        h.clock.now += 2
        h.send("STARTING")
        h.send("RUNNING", pid=6)
        loop(h, 2)
        assert ["crash", "crash_loop"] == [a.kind for a in alerts(h)]

    def test_group_wait_is_a_duration_flag(self):
        """--group-wait takes the suite's durations; a bad value names the flag."""
        assert 30.0 == parse_args(["--group-wait", "30s", "--sink", "file:/dev/null"]).group_wait
        assert 0.0 == parse_args(["--sink", "file:/dev/null"]).group_wait
        with pytest.raises(SystemExit):
            parse_args(["--group-wait", "soon", "--sink", "file:/dev/null"])

    def test_a_reminder_at_most_every_repeat_with_the_count(self, tmp_path):
        """Looping for 25 minutes with --repeat 10m gives exactly two reminders."""
        h = Harness(tmp_path, repeat=600.0)
        loop(h)
        keep_looping(h, 50)
        reminders = [a for a in alerts(h) if a.details.get("reminder")]
        assert [a.details["reminder"] for a in reminders] == [1, 2]
        assert reminders[0].count > 3
        assert "still crash looping" in subject(reminders[0])

    def test_a_reminder_names_the_latest_exit_and_its_cause_once_delivered(self, tmp_path):
        """The reminder goes through the same enrichment as a crash: the latest exit's status
        and cause (here PHP's memory_limit from the stderr tail) are in what a person reads."""
        h = Harness(tmp_path, repeat=600.0)
        loop(h)
        keep_looping(h, 25)
        (reminder,) = [a for a in alerts(h) if a.details.get("reminder")]
        tail = "PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted\n"
        sent = enrich_alert(
            reminder, enrich_rpc({"statename": "EXITED", "exitstatus": 255, "pid": 5}, tail)
        )
        _, text = render_text(sent)
        assert ("Exit status: 255" in text, "ran out of PHP memory" in text) == (True, True)

    def test_resolved_only_after_a_stable_window_saying_how_long_and_how_many(self, tmp_path):
        """RUNNING for 59s resolves nothing; at 60s one resolved names duration and exits."""
        h = Harness(tmp_path)
        loop(h, 4)
        h.clock.now += 59
        h.cm.on_timer()
        assert not [a for a in alerts(h) if a.kind == "resolved"]
        h.clock.now += 1
        h.cm.on_timer()
        h.clock.now += 100
        h.cm.on_timer()
        (resolved,) = [a for a in alerts(h) if a.kind == "resolved"]
        assert (resolved.resolves, resolved.count) == ("crash_loop", 4)
        assert "lasted 4 seconds and saw 4 exits" in resolved.message
        assert "[h] g:w is stable again after a crash loop of 4 seconds" == subject(resolved)

    def test_repeat_below_a_second_is_refused_with_the_flag_named(self, capsys):
        """--repeat 0 was taken as 1 s without a word; a bad flag exits 2 and says why."""
        with pytest.raises(SystemExit) as stop:
            parse_args(["--repeat", "0", "--sink", "file:/dev/null"])
        assert 2 == stop.value.code
        err = capsys.readouterr().err.splitlines()
        (line,) = [ln for ln in err if ln.startswith("supervisor-crashmail: error:")]
        assert "invalid --repeat 0s" in line


class TestRemindersSayWhatIsTrueNow:
    def test_fatal_then_started_again_is_looping_again_not_fatal(self, tmp_path):
        """FATAL, then someone starts it and it crashes again: the next reminder says it
        crash-loops (subject and body); a reminder while FATAL says FATAL in both."""
        h = Harness(tmp_path, repeat=600.0)
        loop(h)
        h.send("FATAL")
        h.clock.now += 601
        h.cm.on_timer()
        h.send("STARTING")
        h.send("RUNNING", pid=8)
        h.send("EXITED", expected=0, pid=8)
        h.clock.now += 601
        h.cm.on_timer()
        first, second = [a for a in alerts(h) if a.details.get("reminder")]
        assert "is still FATAL: supervisord gave up" in subject(first)
        assert "reminder: FATAL" in first.message
        assert "is still crash looping" in subject(second)
        assert "reminder: still crash looping" in second.message

    def test_a_process_stopped_when_crashmail_comes_back_gets_no_reminders(self, tmp_path):
        """supervisord restarted and left it STOPPED (autostart=false): the incident stays
        open, quietly, with no reminder every --repeat and no "stopped on purpose" note."""
        h = Harness(tmp_path, repeat=600.0)
        loop(h)
        h.cm = restarted(h)
        h.cm.start()
        h.cm._results.put(("seed", [{"group": "g", "name": "w", "statename": "STOPPED"}]))
        h.cm.on_timer()
        for _ in range(5):
            h.clock.now += 601
            h.cm.on_timer()
        got = alerts(h)
        assert [] == [a for a in got if a.details.get("reminder")]
        assert [] == [a for a in got if a.details.get("note")]
        assert "g:w" in h.cm.incidents
        # started again and still broken: reminders resume, in the same incident
        h.send("STARTING")
        h.send("EXITED", expected=0, pid=9)
        h.clock.now += 601
        h.cm.on_timer()
        assert 1 == len([a for a in alerts(h) if a.details.get("reminder")])


class TestStoppingIsNotResolving:
    def test_stop_while_looping_notes_once_and_never_resolves(self, tmp_path):
        """Two stops during a loop: one note, no resolved alert, the incident stays open."""
        h = Harness(tmp_path)
        loop(h)
        h.send("STOPPING", pid=6)
        h.send("STOPPED", pid=6)
        h.clock.now += 600
        h.cm.on_timer()
        h.send("STARTING")
        h.send("EXITED", expected=0, pid=7)
        h.send("STOPPED", pid=7)
        h.clock.now += 600
        h.cm.on_timer()
        notes = [a for a in alerts(h) if a.details.get("note") == "stopped"]
        assert (len(notes), [a for a in alerts(h) if a.kind == "resolved"]) == (1, [])
        assert "g:w" in h.cm.incidents

    def test_the_stopped_note_says_how_long_ago_the_incident_began(self, tmp_path):
        """'... since it began 10 minutes ago', also for an incident under a second old."""
        h = Harness(tmp_path)
        loop(h)
        h.clock.now += 600
        h.send("STOPPED", pid=6)
        h.clock.now += STOP_NOTE_HOLD
        (note,) = [a for a in alerts(h) if a.details.get("note") == "stopped"]
        assert "exits or failed starts since it began 10 minutes" in note.message
        assert " ago)." in note.message

    def test_supervisorctl_restart_sends_no_stopped_note_a_real_stop_does_once(self, tmp_path):
        """Stop and start again within STOP_NOTE_HOLD (supervisorctl restart, what the loop
        alert tells you to run): no note. Stopped for longer: one note, due after the hold."""
        h = Harness(tmp_path)
        loop(h)
        h.send("STOPPED", pid=6)
        h.clock.now += 1
        h.send("STARTING")
        h.send("EXITED", expected=0, pid=7)
        assert [] == [a for a in alerts(h) if a.details.get("note")]
        h.send("STOPPED", pid=7)
        stopped_at = h.clock.now
        waiting = [i.alert for i in h.outbox.due_incidents(stopped_at + STOP_NOTE_HOLD - 1)]
        assert [] == [a for a in waiting if a.details.get("note")]
        h.clock.now += STOP_NOTE_HOLD
        (note,) = [a for a in alerts(h) if a.details.get("note") == "stopped"]
        assert "stopped on purpose while crash looping" in subject(note) + note.message

    def test_a_restart_continues_the_incident_and_resolves_it_once(self, tmp_path):
        """After a restart the broken worker raises no new loop; stable later: one resolved."""
        h = Harness(tmp_path)
        loop(h)
        h.send("STOPPED", pid=6)
        h.cm = restarted(h)
        h.serial = 0
        loop(h, 5)
        h.clock.now += 61
        h.cm.on_timer()
        kinds = [a.kind for a in alerts(h)]
        assert (kinds.count("crash"), kinds.count("crash_loop"), kinds.count("resolved")) == (
            1,
            1,  # the loop alert; the restart's start withdrew the waiting "stopped" note
            1,
        )
        (resolved,) = [a for a in alerts(h) if a.kind == "resolved"]
        assert resolved.count == 8

    def test_seed_after_restart_starts_the_stable_clock_of_running_processes(self, tmp_path):
        """A crashmail started after the fix sees the process RUNNING in its seed and resolves."""
        h = Harness(tmp_path)
        loop(h)
        h.cm = restarted(h)
        h.cm.start()
        h.cm._results.put(("seed", [{"group": "g", "name": "w", "statename": "RUNNING"}]))
        h.cm.on_timer()
        h.clock.now += 61
        h.cm.on_timer()
        assert [a.kind for a in alerts(h)][-1] == "resolved"


class TestFailedStarts:
    def test_backoffs_then_fatal_give_one_alert(self, tmp_path):
        """3 failed starts then FATAL 4 ms later: one crash_loop that says FATAL, no fatal."""
        h = Harness(tmp_path)
        failed_starts(h, 3)
        h.clock.now += 0.004
        h.send("FATAL")
        got = alerts(h)
        assert [a.kind for a in got] == ["crash_loop"]
        assert got[0].details["fatal"] is True
        assert "supervisorctl start g:w" in got[0].message

    def test_a_fatal_slowed_by_a_busy_disk_still_folds_into_the_loop_alert(self, tmp_path):
        """FATAL 3 s after the last BACKOFF (the answer waited for a slow commit): whatever
        the courier found due by then went out, and it was not the loop alert."""
        h = Harness(tmp_path)
        failed_starts(h, 3)
        h.clock.now += 2
        due = [i.id for i in h.outbox.due_incidents(h.clock.now)]
        assert [] == due
        h.send("FATAL")
        got = alerts(h)
        assert [a.kind for a in got] == ["crash_loop"]
        assert got[0].details["fatal"] is True

    def test_fatal_long_after_the_loop_alert_is_its_own_alert_once(self, tmp_path):
        """A FATAL after the loop alert went out is sent once, inside the incident."""
        h = Harness(tmp_path)
        loop(h)
        h.outbox.make_message([i.id for i in h.outbox.due_incidents(10**12)], alerts(h)[-1], [])
        h.send("FATAL")
        h.send("FATAL")
        got = [a.kind for a in alerts(h)]
        assert got == ["fatal"]


class TestReadableTexts:
    def test_repeated_stderr_lines_collapse_newest_last(self):
        """17 equal lines become one with (x17); the limit keeps the newest lines."""
        text = "start\n" + "boom\n" * 17 + "\n".join(f"l{i}" for i in range(30))
        out = collapse_repeats(text, limit=5).splitlines()
        assert out == ["l25", "l26", "l27", "l28", "l29"]
        assert collapse_repeats("a\nboom\n" + "boom\n" * 16) == "a\nboom  (x17)"

    @pytest.mark.parametrize(
        ("seconds", "words"),
        [(0, "0 seconds"), (1, "1 second"), (45, "45 seconds"), (3725, "1 hour 2 minutes")],
    )
    def test_durations_in_words(self, seconds, words):
        """Durations are written the way a person says them."""
        assert duration_words(seconds) == words

    def test_summary_subject_names_the_processes_in_time_order(self):
        """A fold of three processes names them, the first to fail first."""
        got = fold(
            [
                Alert("crash", "h", "g", "b", time=2.0),
                Alert("crash", "h", "g", "a", time=1.0),
                Alert("crash", "h", "g", "c", time=3.0),
            ]
        )
        assert subject(got) == "[h] 3 processes had repeated alerts: a, b, c"

    def test_times_are_iso_8601_with_the_zone(self):
        """The body's time reads 1970-01-01T00:00:00Z."""
        assert "Time: 1970-01-01T00:00:00Z" in render_text(Alert("crash", "h", time=0.0))[1]

    def test_the_file_sink_adds_an_iso_time_and_the_text(self, tmp_path):
        """A file sink line keeps time (a number) and adds time_iso and the readable text."""
        import json

        from listeners.notify.sinks import FileSink

        FileSink(str(tmp_path / "a.jsonl")).send(Alert("crash", "h", "g", "w", time=0.0))
        line = json.loads((tmp_path / "a.jsonl").read_text())
        assert (line["time"], line["time_iso"]) == (0.0, "1970-01-01T00:00:00Z")
        assert line["text"].startswith("[h] g:w crashed\n\nHost: h\n")


class TestOutboxOwner:
    def test_an_outbox_of_another_supervisord_is_refused(self, tmp_path, monkeypatch, capsys):
        """--outbox of another supervisord's crashmail: exit 2 with a one-line reason."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim("unix:///other/s.sock")
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///mine/s.sock")
        with pytest.raises(SystemExit) as exc:
            main(["--outbox", str(path), "--sink", f"file:{tmp_path}/a.jsonl"])
        err = capsys.readouterr().err
        assert exc.value.code == 2
        assert "belongs to the crashmail of another supervisord (unix:///other/s.sock)" in err

    def test_the_same_owner_opens_it_again(self, tmp_path):
        """A claim by the same identity succeeds; another raises."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        box.claim("a")
        box.claim("a")
        with pytest.raises(OutboxOwnerError):
            box.claim("b")

    def test_default_outboxes_of_two_supervisords_differ(self, tmp_path):
        """The default outbox path is derived from the server URL."""
        env = {"XDG_STATE_HOME": str(tmp_path)}
        a = parse_args(["--server-url", "unix:///a.sock"], env)
        b = parse_args(["--server-url", "unix:///b.sock"], env)
        assert a.outbox != b.outbox
        assert (a.identity, b.identity) == ("unix:///a.sock", "unix:///b.sock")

    def test_default_alert_files_of_two_supervisords_differ(self, tmp_path):
        """Without --sink each supervisord gets its own alert file (its alerts carry no
        supervisord identity, so one shared file mixed them), named with the outbox's id."""
        env = {"XDG_STATE_HOME": str(tmp_path)}
        a = parse_args(["--server-url", "unix:///a.sock"], env)
        b = parse_args(["--server-url", "unix:///b.sock"], env)
        (sa,), (sb,) = a.sinks, b.sinks
        assert (sa.kind, sb.kind) == ("file", "file")
        assert sa.target != sb.target
        state = tmp_path / "supervisor-listeners"
        for cfg, sink in ((a, sa), (b, sb)):
            ident = cfg.outbox.rsplit("-", 1)[1].removesuffix(".sqlite")
            assert sink.target == str(state / f"crashmail-alerts-{ident}.jsonl")


class TestDeliveryHealth:
    def test_the_announcer_publishes_on_change_and_once_a_minute(self, tmp_path):
        """First tick publishes; unchanged counts wait 60s; a new pending one goes at once."""
        from listeners.core import bus
        from listeners.notify.delivery import DeliveryHealthAnnouncer

        clock = FakeClock(1000.0)
        box = Outbox(str(tmp_path / "o.sqlite"))
        sent: list[bus.Message] = []
        ann = DeliveryHealthAnnouncer(
            box,
            ["mail"],
            host="h",
            publish=lambda d: sent.append(bus.decode(d)),
            clock=clock,
        )
        ticks = []
        for step in (0, 5, 10):
            clock.now = 1000.0 + step
            ticks.append(ann.tick())
        box.record(Alert("crash", "h", key="k"), due=0)
        box.make_message([1], Alert("crash", "h", key="k"), ["mail"])
        clock.advance(5)
        ticks.append(ann.tick())
        clock.advance(61)
        ticks.append(ann.tick())
        assert ticks == [True, False, False, True, True]
        assert sent[-1] == bus.DeliveryHealth("h", {"mail": 1}, {"mail": 0})

    def test_pending_and_failures_per_sink_survive_pruning(self, tmp_path):
        """Two failed attempts count 2; pruning after delivery keeps the count."""
        box = Outbox(str(tmp_path / "o.sqlite"))
        box.record(Alert("crash", "h", key="k"), due=0)
        mid = box.make_message([1], Alert("crash", "h", key="k"), ["mail", "file"])
        box.failed(mid, "mail", "down", retry_at=5.0)
        box.failed(mid, "mail", "down", retry_at=9.0)
        assert box.delivery_health(["mail", "file"]) == {"mail": (1, 2), "file": (1, 0)}
        box.delivered(mid, "mail")
        box.delivered(mid, "file")
        box.prune(0)
        assert box.delivery_health(["mail", "file"]) == {"mail": (0, 2), "file": (0, 0)}


class TestLoopStateOnABadDisk:
    def test_a_loop_that_forms_while_the_outbox_is_locked_loses_nothing(self, tmp_path):
        """Another process holds the outbox's lock while a crash loop forms: no exception
        reaches the event loop, each write waits at most record_timeout, the loop alert is
        kept in memory, and once the lock goes it is written with the loop's state."""
        import sqlite3

        h = Harness(tmp_path)
        h.outbox.record_timeout = 0.05
        locker = sqlite3.connect(str(tmp_path / "o.sqlite"), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            loop(h)  # three crashes: crash, crash (batched), crash_loop
            assert "g:w" in h.cm.incidents
            assert h.outbox.spooled >= 1
            assert {} == h.outbox.open_loops()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        h.outbox.drain_spool()
        assert 1 == h.outbox.flush_loops()
        assert ["g:w"] == list(h.outbox.open_loops())
        kinds = [a.kind for a in alerts(h)]
        assert 1 == kinds.count("crash_loop")
        # restarted on the same outbox, the incident goes on instead of opening anew
        assert "g:w" in restarted(h).incidents

    def test_a_stable_run_closes_the_loop_in_the_file_once_it_can(self, tmp_path):
        """The close of a loop that could not be written at once reaches the file later."""
        import sqlite3

        h = Harness(tmp_path)
        h.outbox.record_timeout = 0.05
        loop(h)
        assert ["g:w"] == list(h.outbox.open_loops())
        locker = sqlite3.connect(str(tmp_path / "o.sqlite"), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            h.clock.now += 61
            h.cm.on_timer()  # resolved: the close is deferred, the alert spooled
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        h.outbox.drain_spool()
        h.outbox.flush_loops()
        assert {} == h.outbox.open_loops()
        assert 1 == [a.kind for a in alerts(h)].count("resolved")


class TestProgramsThatMatchNothing:
    def test_a_p_that_names_no_process_is_warned_about_once_at_the_seed(self, tmp_path, capsys):
        """-p nope (a typo) would keep crashmail silent for good: the first snapshot says so;
        -p w (a process name) and g:* match and say nothing."""
        h = Harness(tmp_path, programs=("nope", "w", "g:*"))
        h.cm.start()
        h.cm._results.put(("seed", [{"group": "g", "name": "w", "statename": "RUNNING"}]))
        h.cm.on_timer()
        warned = [
            ln
            for ln in capsys.readouterr().err.splitlines()
            if "crashmail.no_process_matches" in ln
        ]
        assert 1 == len(warned), warned
        assert '"program": "nope"' in warned[0]
