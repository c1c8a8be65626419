"""listeners.core.log: the JSON and console lines every listener writes to stderr."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from listeners.core import log


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    log.configure()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJson:
    def test_fields_then_event_level_and_utc_time(self):
        """A line is the call's fields, then event, level and an ISO UTC timestamp."""
        out = io.StringIO()
        log.configure("info", out)
        log.get_logger("t").warning("memmon.decision", process="g:a", measured=17)
        [line] = lines(out)
        assert ["process", "measured", "event", "level", "timestamp"] == list(line)
        assert ("memmon.decision", "warning", "g:a", 17) == (
            line["event"],
            line["level"],
            line["process"],
            line["measured"],
        )
        assert str(line["timestamp"]).endswith("Z")

    def test_the_level_filters(self):
        """Under --log-level warning, info and debug are dropped; error passes."""
        out = io.StringIO()
        log.configure("warning", out)
        logger = log.get_logger("t")
        logger.debug("a")
        logger.info("b")
        logger.error("c")
        assert ["c"] == [line["event"] for line in lines(out)]

    def test_exception_carries_the_traceback(self):
        """log.exception and exc_info=True add the traceback of the exception being handled."""
        out = io.StringIO()
        log.configure("info", out)
        logger = log.get_logger("t")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("x.failed", key=1)
            logger.info("x.request_failed", exc_info=True)
        first, second = lines(out)
        assert "error" == first["level"]
        assert "RuntimeError: boom" in str(first["exception"])
        assert "RuntimeError: boom" in str(second["exception"])
        assert "exc_info" not in second

    def test_values_json_cannot_hold_are_written_as_repr(self):
        """A set or an object in a field does not break the line."""
        out = io.StringIO()
        log.configure("info", out, json=True)
        log.get_logger("t").info("e", things={1}, obj=object())
        [line] = lines(out)
        assert "{1}" == line["things"]

    def test_a_closed_stream_is_survived(self):
        """A stream closed under the listener (a swapped stderr) never raises."""
        out = io.StringIO()
        log.configure("info", out)
        out.close()
        log.get_logger("t").error("still.alive")


class TestConsole:
    def test_a_person_reads_level_event_and_pairs(self):
        """On a terminal: time, [level], event, key=value pairs; strings quoted."""
        out = io.StringIO()
        log.configure("info", out, json=False)
        log.get_logger("t").info("tasks.enabled", task="mail_sender", count=2)
        text = out.getvalue()
        assert "[info     ] tasks.enabled" in text
        assert "task='mail_sender' count=2" in text


def test_no_listener_imports_asyncio():
    """The listeners run without asyncio (it cost each one about 6 MiB of PSS)."""
    code = (
        "import sys, listeners.crashmail, listeners.memmon, listeners.exporter, listeners.health;"
        "print('asyncio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


def test_crashmail_memmon_and_the_exporter_do_not_import_stdlib_logging():
    """logging (about 0.8 MiB of PSS) comes in only with a library that logs through it."""
    for tool in ("crashmail", "memmon", "exporter", "tasks"):
        code = f"import sys, listeners.{tool}; print('logging' in sys.modules)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert ("False", tool) == (out.stdout.strip(), tool)


def test_a_library_logging_through_the_stdlib_writes_to_stderr_not_stdout():
    """The webhook sink brings in requests/urllib3: their stdlib log lines go to stderr (stdout
    is supervisord's protocol), at warning and above."""
    code = (
        "import sys, listeners.core.log as l; l.configure('info');"
        "assert 'logging' not in sys.modules;"
        "import listeners.notify.webhook, logging;"
        "logging.getLogger('urllib3').warning('retrying'); logging.getLogger('x').info('quiet')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ("", True, False) == (out.stdout, "retrying" in out.stderr, "quiet" in out.stderr)
