"""Log-pattern alerts: matching, multi-line grouping, storms, the grace, and crashmail's wiring."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listeners.core.exits import OomWatch
from listeners.crashmail import Config, CrashMail, parse_args
from listeners.notify.outbox import Outbox
from listeners.notify.patterns import PRESETS, LogWatch, parse_pattern, pattern_alert
from tests.fakes import make_event
from tests.test_crashmail import FakeClock, state_event

PHP_UNCAUGHT = (
    "PHP Fatal error:  Uncaught RuntimeException: lost in /app/w.php:2\n"
    "Stack trace:\n#0 /app/w.php(3): f()\n#1 {main}\n  thrown in /app/w.php on line 2\n"
)
PY_CHAINED = (
    "Traceback (most recent call last):\n"
    '  File "w.py", line 2, in <module>\n'
    "KeyError: 'x'\n"
    "\n"
    "During handling of the above exception, another exception occurred:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "w.py", line 4, in <module>\n'
    "ValueError: boom\n"
)


def watch(*presets: str, grace: float = 2.0, storm=(3, 60.0)) -> LogWatch:
    return LogWatch([r for p in presets for r in PRESETS[p]], grace=grace, storm=storm)


class TestLogWatch:
    def test_a_php_uncaught_trace_is_one_match(self):
        """'Uncaught ... Stack trace ... thrown in' is grouped into one match."""
        w = watch("php")
        w.feed("g", "w_0", 7, "stderr", "job 1 done\n" + PHP_UNCAUGHT + "job 2 done\n", 0.0)
        [m] = w.due(10.0)
        assert "php_fatal" == m.rule.name
        assert 5 == len(m.lines)
        assert "PHP fatal error: Uncaught RuntimeException: lost in /app/w.php:2" == m.text

    def test_a_chained_python_traceback_is_one_match(self):
        """A traceback with its 'During handling' cause is one match, ending at the last error."""
        w = watch("python")
        w.feed("g", "w", 7, "stderr", PY_CHAINED + "next job\n", 0.0)
        [m] = w.due(10.0)
        assert "ValueError: boom" == m.lines[-1]
        assert "Python traceback: ValueError: boom" == m.text
        assert 9 == len(m.lines)

    def test_a_trace_cut_across_chunks_is_still_one_match(self):
        """Data may end mid-line: the unfinished line waits for the next chunk."""
        w = watch("php")
        text = PHP_UNCAUGHT
        for i in range(0, len(text), 7):
            w.feed("g", "w", 7, "stderr", text[i : i + 7], 0.0)
        assert [] == w.due(0.1)
        [m] = w.due(10.0)
        assert 5 == len(m.lines)

    def test_a_trace_at_the_end_of_output_closes_when_idle(self):
        """A traceback nothing follows is complete once the stream is idle."""
        w = watch("python")
        w.feed("g", "w", 7, "stderr", 'Traceback (most recent call last):\n  File "x"\nE: e\n', 0.0)
        assert 1 == len(w.due(5.0))

    def test_warnings_alert_only_as_a_storm(self):
        """PHP Warning lines below the storm count are no alert; reaching it is one."""
        w = watch("php", storm=(3, 60.0))
        w.feed(
            "g", "w", 7, "stderr", "PHP Warning:  Undefined variable $x in a.php on line 1\n" * 2, 0
        )
        assert [] == w.due(10.0)
        w.feed(
            "g", "w", 7, "stderr", "PHP Warning:  Undefined variable $x in a.php on line 1\n", 11
        )
        [m] = w.due(20.0)
        assert (3, "php_warning") == (m.count, m.rule.name)

    def test_an_exit_drops_what_the_dying_process_wrote(self):
        """A fatal error followed by the process's death: the crash alert has it, no pattern one."""
        w = watch("php")
        w.feed(
            "g",
            "w",
            7,
            "stderr",
            "PHP Fatal error:  Allowed memory size of 16 bytes exhausted\n",
            0,
        )
        w.exited("g", "w", 7)
        w.feed("g", "w", 7, "stderr", "PHP Fatal error:  late line from the dead pid\n", 0.5)
        assert [] == w.due(10.0)

    def test_lines_without_a_pattern_are_never_matches(self):
        """Ordinary output gives nothing, and costs no per-line work."""
        w = watch("php", "python")
        w.feed("g", "w", 7, "stdout", "sent mail 1\nsent mail 2\n" * 1000, 0)
        assert ([], 0) == (w.due(10.0), w.lines_seen)

    @given(st.lists(st.text(max_size=300), max_size=20))
    def test_any_output_in_any_chunks_never_raises(self, chunks):
        """Arbitrary text, cut anywhere, gives bounded matches and no exception."""
        w = watch("php", "python")
        for i, chunk in enumerate(chunks):
            w.feed("g", "w", 1, "stderr", chunk, float(i))
        for m in w.due(1000.0):
            assert 1 <= len(m.lines) <= 60


class TestParsePattern:
    def test_presets_and_regex(self):
        """php, python and regex:EXPR are accepted; anything else names the accepted forms."""
        assert {"php_memory_limit", "php_fatal", "php_warning"} == {
            r.name for r in parse_pattern("php")
        }
        assert "custom" == parse_pattern("regex:ERROR .*")[0].name
        with pytest.raises(ValueError, match="preset"):
            parse_pattern("ruby")
        with pytest.raises(ValueError, match="invalid --pattern"):
            parse_pattern("regex:(")

    def test_the_flag_reaches_the_config(self):
        """--pattern php --pattern python --pattern-storm 50/10s: rules and storm in Config."""
        config = parse_args(
            ["--pattern", "php", "--pattern", "python", "--pattern-storm", "50/10s"], env={}
        )
        assert 4 == len(config.patterns)
        assert (50, 10.0) == config.pattern_storm

    def test_a_bad_pattern_is_a_usage_error(self, capsys):
        """A bad --pattern exits 2 with a one-line message, no traceback."""
        with pytest.raises(SystemExit) as exc:
            parse_args(["--pattern", "rubyy"], env={})
        assert 2 == exc.value.code
        assert "invalid --pattern 'rubyy'" in capsys.readouterr().err

    def test_the_alert_names_the_match_and_carries_the_trace(self):
        """A match's alert: kind log_pattern, the title names it, the trace is the tail."""
        w = watch("php")
        w.feed("g", "w", 7, "stderr", PHP_UNCAUGHT, 0.0)
        [m] = w.due(10.0)
        alert = pattern_alert(m, host="h", key="k", time=1.0)
        assert "log_pattern" == alert.kind
        assert alert.details["reason_text"].startswith("PHP fatal error")
        assert "thrown in" in (alert.stderr_tail or "")


def log_event(data: str, name="w", group="g", pid=7, serial=1):
    payload = f"processname:{name} groupname:{group} pid:{pid} channel:stderr\n{data}"
    return make_event("PROCESS_LOG_STDERR", payload, serial=serial)


class TestCrashMailWiring:
    def make(self, tmp_path, oom=None):
        clock = FakeClock()
        outbox = Outbox(str(tmp_path / "o.sqlite"), clock=clock)
        config = Config(host="h", patterns=PRESETS["php"], coalesce=30.0)
        cm = CrashMail(config, outbox, clock=clock, boot="b", me="crashmail:crashmail", oom=oom)
        return cm, outbox, clock

    def test_a_fatal_error_without_exit_is_one_log_pattern_alert(self, tmp_path):
        """stderr 'PHP Fatal error' from a process that keeps running: one alert after the grace."""
        cm, outbox, clock = self.make(tmp_path)
        cm.handle(log_event(PHP_UNCAUGHT))
        cm.on_timer()
        assert [] == outbox.due_incidents(clock.now)
        clock.now += 3
        cm.on_timer()
        [incident] = outbox.due_incidents(clock.now)
        assert ("log_pattern", "w") == (incident.alert.kind, incident.alert.name)

    def test_a_fatal_error_the_process_dies_of_is_only_the_crash(self, tmp_path):
        """The memory_limit line then EXITED: one crash alert, no log_pattern alert."""
        cm, outbox, clock = self.make(tmp_path)
        cm.handle(log_event("PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted\n"))
        cm.handle(state_event("EXITED", serial=2, expected=0, pid=7))
        clock.now += 3
        cm.on_timer()
        assert ["crash"] == [i.alert.kind for i in outbox.due_incidents(clock.now)]

    def test_a_crash_records_whether_the_oom_counter_moved(self, tmp_path):
        """The crash alert's details say whether an OOM kill was counted just before."""
        counts = iter([3, 4])
        cm, outbox, clock = self.make(tmp_path, oom=OomWatch(lambda: next(counts)))
        cm.on_timer()
        cm.handle(state_event("EXITED", serial=2, expected=0, pid=7))
        [incident] = outbox.due_incidents(clock.now)
        assert incident.alert.details["oom_kill"] is True
