"""Crash alerts name their cause: the courier's enrichment classifies, subject and text say it."""

from __future__ import annotations

from typing import Any

from listeners.notify.alert import Alert, render_text
from listeners.notify.enrich import enrich_alert
from tests.fakes import FakeSupervisor

MEMORY = (
    "PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted (tried to allocate"
    " 2097152 bytes) in /app/w.php on line 4\n"
)


class LogSupervisor(FakeSupervisor):
    """FakeSupervisor plus supervisord's own log (readLog)."""

    def __init__(self, processes: dict[str, dict[str, Any]], log: str = "") -> None:
        super().__init__(processes)
        self.log = log

    def call(self, method: str, *args: Any) -> Any:
        self._record(method, *args)
        assert method == "supervisor.readLog"
        return self.log


def crash(**details: Any) -> Alert:
    return Alert(kind="crash", host="h", group="php", name="php_0", key="k", details=details)


def proc(state: str, status: int, tail: str) -> dict[str, dict[str, Any]]:
    info = {"group": "php", "name": "php_0", "statename": state, "exitstatus": status}
    return {"php:php_0": {**info, "stderr_tail": tail}}


class TestEnrichNamesTheCause:
    def test_php_memory_limit_death_is_named_in_subject_and_text(self):
        """Status 255 and PHP's memory line: 'crashed: ran out of PHP memory' in the subject."""
        alert = enrich_alert(crash(), LogSupervisor(proc("EXITED", 255, "job 1\n" + MEMORY)))
        cause = "ran out of PHP memory (memory_limit 16 MiB)"
        assert ("php_memory_limit", cause) == (
            alert.details["reason"],
            alert.details["reason_text"],
        )
        subject, body = render_text(alert)
        assert f"[h] php:php_0 crashed: {cause}" == subject
        assert f"Cause: {cause}" in body.splitlines()

    def test_a_signal_is_read_from_supervisords_log(self):
        """Status -1: the signal comes from 'terminated by SIGSEGV' in supervisord's log."""
        log = "2026-12-01 INFO exited: php_0 (terminated by SIGSEGV (core dumped); not expected)\n"
        alert = enrich_alert(crash(), LogSupervisor(proc("EXITED", -1, ""), log))
        assert ("signal", "killed by SIGSEGV (segmentation fault)") == (
            alert.details["reason"],
            alert.details["reason_text"],
        )

    def test_sigkill_with_the_oom_counter_moving_is_the_oom_killer(self):
        """The handler's oom_kill flag plus SIGKILL: killed by the kernel's OOM killer."""
        log = "INFO exited: php_0 (terminated by SIGKILL; not expected)\n"
        alert = enrich_alert(crash(oom_kill=True), LogSupervisor(proc("EXITED", -1, ""), log))
        assert "oom_kill" == alert.details["reason"]

    def test_nothing_to_tell_stays_exit_status(self):
        """An exit with an ordinary stderr tail: 'crashed: exit status 3'."""
        alert = enrich_alert(crash(), LogSupervisor(proc("EXITED", 3, "HTTP 503\n")))
        assert "[h] php:php_0 crashed: exit status 3" == render_text(alert)[0]

    def test_the_cause_in_a_subject_is_one_clean_line(self):
        """A hostile exception message cannot add header lines or terminal escapes."""
        tail = "PHP Fatal error:  Uncaught Exception: a\x1b[31m\r\nBcc: x@evil in /a.php:1\n"
        subject, _ = render_text(enrich_alert(crash(), LogSupervisor(proc("EXITED", 255, tail))))
        assert "\n" not in subject
        assert "\r" not in subject
        assert "\x1b" not in subject
