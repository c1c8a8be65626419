"""memmon's blind spot reaches a real exporter through a real supervisord's bus.

Story: "memmon runs as another user than the workers and may not read two of them: Prometheus
sees how many and which, the status page says so, and once memmon reads them all it clears".
The message is published as memmon publishes it (``supervisor.sendRemoteCommEvent`` of type
``listeners.memmon``), so the path under test is supervisord's REMOTE_COMMUNICATION dispatch to
the exporter, its decoding, the state and both renderers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from listeners.core import bus
from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_exporter_e2e import exporter_conf, fetch, samples
from tests.e2e.test_status_page_e2e import CHROMIUM, open_browser

COUNT = "supervisor_listeners_memmon_unreadable_processes"
PER_PROCESS = "supervisord_process_memory_unreadable"

PROGRAMS = textwrap.dedent(f"""
    [program:php]
    command={PYTHON} {WORKER} steady
    numprocs=3
    process_name=%(program_name)s_%(process_num)d
    startsecs=0
    """)


def metric(port: int, name: str, /, **labels: str) -> float | None:
    return samples(fetch(port)).get((name, frozenset(labels.items())))


class TestMemmonUnreadable:
    def test_unreadable_processes_show_in_metrics_and_on_the_page_until_cleared(self, supervisord):
        """Two processes announced unreadable: count 2, per-process 1/0, a page warning;
        memmon's empty list then brings the count to 0 and removes the warning."""
        port = free_port()
        sup = supervisord(PROGRAMS + exporter_conf(port))
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        sup.wait_all("RUNNING", [f"php:php_{i}" for i in range(3)], timeout=60)
        # what memmon sends at its first check: its ceilings, then what it may not read
        limits = bus.MemoryLimits("h", {f"php:php_{i}": 64 << 20 for i in range(3)})
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(limits))
        blind = bus.ProcessesUnreadable("h", ["php:php_0", "php:php_2"])
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(blind))

        wait_for(lambda: metric(port, COUNT) == 2, 60, 0.3, what="the unreadable count")
        assert 1 == metric(port, PER_PROCESS, group="php", name="php_0")
        assert 0 == metric(port, PER_PROCESS, group="php", name="php_1")
        assert 1 == metric(port, PER_PROCESS, group="php", name="php_2")
        page = fetch(port, "/")
        assert (
            "memmon cannot read 2 processes: php:php_0, php:php_2"
            " (run memmon as the workers&#x27; user or root)"
        ) in page

        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(bus.ProcessesUnreadable("h", [])))
        wait_for(lambda: metric(port, COUNT) == 0, 60, 0.3, what="the count cleared")
        assert 0 == metric(port, PER_PROCESS, group="php", name="php_0")
        assert "memmon cannot read" not in fetch(port, "/")


WARNING = "(() => { const p = document.getElementById('unreadable');"
WARNING += " return p && !p.hidden ? p.textContent : ''; })()"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
class TestLivePage:
    def test_the_open_page_shows_and_clears_the_warning_without_a_reload(self, supervisord):
        """In Chromium, the page's script picks up memmon's list from /api/status and later
        its empty list, in the same document; names go in as text."""
        port = free_port()
        sup = supervisord(PROGRAMS + exporter_conf(port))
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        with open_browser() as browser:
            browser.goto(f"http://127.0.0.1:{port}/")
            assert "" == browser.eval(WARNING)
            browser.eval("window.sameDocument = 'yes'")
            blind = bus.ProcessesUnreadable("h", ["php:php_1", "php:<i>x</i>"])
            sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(blind))
            text = wait_for(lambda: browser.eval(WARNING), 60, 0.3, what="the warning drawn")
            assert (
                "memmon cannot read 2 processes: php:<i>x</i>, php:php_1"
                " (run memmon as the workers' user or root)"
            ) == text
            assert 0 == browser.eval("document.querySelectorAll('#unreadable i').length")
            sup.client.send_remote_comm(
                bus.MEMMON_TYPE, bus.encode(bus.ProcessesUnreadable("h", []))
            )
            wait_for(lambda: browser.eval(WARNING) == "", 60, 0.3, what="the warning cleared")
            assert "yes" == browser.eval("window.sameDocument")
