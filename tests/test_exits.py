"""Exit reasons: what the exit status, the signal, stderr and the OOM counter say."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from listeners.core.exits import (
    REASONS,
    OomWatch,
    classify,
    exit_from_log,
    format_bytes,
    parse_oom_kills,
    read_oom_kills,
    signal_name,
)

# Verbatim stderr of Debian's php8.2-cli and of python3.
PHP_MEMORY = (
    "PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted (tried to allocate"
    " 2097152 bytes) in /app/workers/report.php on line 4\n"
)
PHP_UNCAUGHT = (
    "PHP Fatal error:  Uncaught RuntimeException: queue connection lost in /app/w.php:2\n"
    "Stack trace:\n#0 /app/w.php(3): f()\n#1 {main}\n  thrown in /app/w.php on line 2\n"
)
PHP_FATAL = "PHP Fatal error:  Cannot redeclare f() in /app/w.php on line 9\n"
PY_TRACEBACK = (
    'Traceback (most recent call last):\n  File "w.py", line 1, in <module>\nValueError: boom\n'
)


class TestClassify:
    def test_php_memory_limit_is_named_with_the_limit(self):
        """Status 255 with PHP's 'Allowed memory size' line: out of PHP memory, limit in MiB."""
        r = classify(255, stderr_tail="starting\n" + PHP_MEMORY)
        assert ("php_memory_limit", "ran out of PHP memory (memory_limit 16 MiB)") == (
            r.reason,
            r.text,
        )

    def test_php_uncaught_exception(self):
        """An uncaught PHP exception names its class and message, not the file."""
        r = classify(255, stderr_tail=PHP_UNCAUGHT)
        assert "uncaught_exception" == r.reason
        assert "uncaught PHP exception: RuntimeException: queue connection lost" == r.text

    def test_php_fatal_error(self):
        """Any other PHP fatal error is php_fatal with its message."""
        r = classify(255, stderr_tail=PHP_FATAL)
        assert ("php_fatal", "PHP fatal error: Cannot redeclare f()") == (r.reason, r.text)

    def test_python_traceback(self):
        """A Python traceback names the exception line that ends it."""
        r = classify(1, stderr_tail="log line\n" + PY_TRACEBACK)
        assert ("uncaught_exception", "uncaught Python exception: ValueError: boom") == (
            r.reason,
            r.text,
        )

    def test_the_last_error_written_wins(self):
        """An old PHP fatal error above a newer traceback: the traceback is the cause."""
        assert "uncaught_exception" == classify(1, stderr_tail=PHP_FATAL + PY_TRACEBACK).reason
        assert "php_memory_limit" == classify(255, stderr_tail=PY_TRACEBACK + PHP_MEMORY).reason

    def test_signal_is_named(self):
        """A signal from supervisord's log is named, with what it means."""
        r = classify(-1, signal="SIGSEGV")
        assert ("signal", "killed by SIGSEGV (segmentation fault)", "SIGSEGV") == (
            r.reason,
            r.text,
            r.signal,
        )

    def test_sigkill_with_an_oom_kill_is_the_oom_killer(self):
        """SIGKILL while the OOM counter moved: the kernel's OOM killer."""
        assert "oom_kill" == classify(-1, signal="SIGKILL", oom_kill=True).reason
        assert "signal" == classify(-1, signal="SIGKILL", oom_kill=False).reason

    def test_memmon_and_expected_come_first(self):
        """memmon's restarts and exits listed in exitcodes are never called crashes."""
        assert "memmon" == classify(None, memmon=True, stderr_tail=PHP_FATAL).reason
        r = classify(0, expected=True, stderr_tail=PHP_FATAL)
        assert ("expected", "exited on purpose (exit status 0)") == (r.reason, r.text)

    def test_unknown_stays_exit_status(self):
        """Nothing to tell: 'exit status N' (or unknown when the status is lost)."""
        assert "exit status 3" == classify(3, stderr_tail="HTTP 503 from upstream\n").text
        assert "exit status unknown" == classify(None).text
        assert "killed by a signal" == classify(-1).text

    @given(
        st.one_of(st.none(), st.integers(-(2**31), 2**31)),
        st.one_of(st.none(), st.text(max_size=12), st.integers(-5, 80)),
        st.one_of(st.none(), st.text(max_size=2000)),
        st.booleans(),
        st.booleans(),
    )
    def test_any_input_gives_a_known_reason_and_one_bounded_line(
        self, status, sig, tail, expected, oom
    ):
        """Odd statuses, signals and stderr never raise; the text is one line of bounded size."""
        r = classify(status, signal=sig, stderr_tail=tail, expected=expected, oom_kill=oom)
        assert r.reason in REASONS
        assert "\n" not in r.text
        assert len(r.text) < 240

    @given(st.text(max_size=400), st.text(max_size=400))
    def test_stderr_noise_around_a_memory_death_still_names_it(self, before, after):
        """Lines before the fatal line never hide it; text after it without errors neither."""
        after = after.replace("Fatal error:", "").replace("Traceback", "")
        r = classify(255, stderr_tail=before + "\n" + PHP_MEMORY + after.replace("\n", " "))
        assert "php_memory_limit" == r.reason


class TestHelpers:
    def test_format_bytes(self):
        """memory_limit sizes read the way PHP users write them."""
        assert ["16 MiB", "1.5 GiB", "512 bytes", "128 KiB"] == [
            format_bytes(n) for n in (16 << 20, 3 << 29, 512, 128 << 10)
        ]

    def test_signal_name_forms(self):
        """9, '9', 'KILL' and 'SIGKILL' are the same signal; nonsense is none."""
        assert {"SIGKILL"} == {signal_name(v) for v in (9, "9", "KILL", "SIGKILL", "sigkill")}
        assert [None, None, None] == [signal_name(v) for v in ("", "999", "SIG KILL; rm")]

    def test_parse_oom_kills(self):
        """The oom_kill line of /proc/vmstat or memory.events; none when absent."""
        assert 7 == parse_oom_kills("pgfault 1\noom_kill 7\n")
        assert 2 == parse_oom_kills("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
        assert parse_oom_kills("oom 2\n") is None

    def test_read_oom_kills_sums_readable_sources_and_knows_when_it_cannot_tell(self):
        """Counters found are summed; no readable counter means unknown, not zero."""
        files = {"/a": "oom_kill 3\n", "/b": "oom_kill 1\n"}
        assert 4 == read_oom_kills(["/a", "/b", "/c"], read=files.get)
        assert read_oom_kills(["/c"], read=files.get) is None

    def test_read_oom_kills_finds_its_own_cgroup(self):
        """The cgroup v2 this process runs in is read too (a container's own counter)."""
        files = {
            "/proc/self/cgroup": "0::/system.slice/app.service\n",
            "/sys/fs/cgroup/system.slice/app.service/memory.events": "oom_kill 5\n",
        }
        assert 5 == read_oom_kills(read=files.get)


class TestOomWatch:
    def test_a_kill_within_the_window_is_seen_and_forgotten_after(self):
        """The counter moved since the oldest sample of the window: fired; later: not."""
        counts = iter([0, 0, 1, 1, 1, 1])
        watch = OomWatch(read=lambda: next(counts), window=10)
        watch.sample(0)
        watch.sample(5)
        assert watch.fired(6) is True
        watch.sample(20)
        watch.sample(31)
        assert watch.fired(32) is False

    def test_no_counter_is_unknown(self):
        """A host without a readable counter answers None (the signal alone is reported)."""
        watch = OomWatch(read=lambda: None)
        watch.sample(0)
        assert watch.fired(1) is None


LOG = """\
2026-12-04 10:00:00,001 INFO spawned: 'worker' with pid 100
2026-12-04 10:00:00,002 INFO spawned: 'worker' with pid 200
2026-12-04 10:00:01,000 INFO exited: worker (exit status 5; not expected)
2026-12-04 10:00:01,001 INFO exited: worker (exit status 3; not expected)
2026-12-04 10:00:02,000 INFO spawned: 'solo' with pid 300
2026-12-04 10:00:03,000 INFO exited: solo (exit status 3; not expected)
2026-12-04 10:00:03,500 INFO spawned: 'solo' with pid 301
2026-12-04 10:00:04,000 INFO exited: solo (exit status 5; not expected)
2026-12-04 10:00:04,500 INFO spawned: 'solo' with pid 302
2026-12-04 10:00:05,000 INFO exited: solo (terminated by SIGKILL; not expected)
"""


class TestExitOfAPid:
    def test_the_exit_after_that_pids_spawn_not_the_latest(self):
        """pid 300 exited 3; later runs exited 5 and by SIGKILL: the crash of 300 says 3."""
        assert exit_from_log(LOG, "solo", 300) == (3, "exit status 3")
        assert exit_from_log(LOG, "solo", 301) == (5, "exit status 5")
        assert exit_from_log(LOG, "solo", 302) == (None, "terminated by SIGKILL")
        assert exit_from_log(LOG, "solo") == (None, "terminated by SIGKILL")  # no pid: latest

    def test_two_programs_writing_one_name_give_no_status_rather_than_the_wrong_one(self):
        """a:worker and b:worker both log as 'worker': which exit is whose cannot be told."""
        assert exit_from_log(LOG, "worker", 100) == (None, "")
        assert exit_from_log(LOG, "worker", 200) == (None, "")

    def test_a_pid_whose_spawn_is_not_in_the_log_gives_nothing(self):
        assert exit_from_log(LOG, "solo", 999) == (None, "")

    def test_an_exit_from_before_the_window_does_not_count_as_another_process(self):
        """The read window starts mid-log: an exit without its spawn is no running sibling."""
        text = "INFO exited: solo (exit status 1; not expected)\n" + LOG
        assert exit_from_log(text, "solo", 300) == (3, "exit status 3")
