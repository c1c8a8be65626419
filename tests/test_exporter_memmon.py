"""memmon's blind spot in the exporter: the processes it may not read, as metrics and on the page.

memmon fails open on a process whose /proc memory it may not read (``denied``) and says so on
supervisord's bus (``ProcessesUnreadable``); each message replaces the last one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from listeners.core import bus
from listeners.core.background import Worker
from listeners.exporter import ExporterHandler
from listeners.metrics.api import status_json
from listeners.metrics.page import render_status_page, unreadable_warning
from listeners.metrics.render import Renderer
from listeners.metrics.state import ExporterState
from tests.fakes import FakeSupervisor
from tests.test_exporter import ev, info, registry_for, val

COUNT = "supervisor_listeners_memmon_unreadable_processes"
PER_PROCESS = "supervisord_process_memory_unreadable"
NOW = 1_800_000_000.0


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker("test")
    yield w
    w.close()


@pytest.fixture
def exporter(worker: Worker) -> tuple[ExporterState, ExporterHandler]:
    infos = [info("php", f"php_{i}", "RUNNING", pid=10 + i) for i in range(3)]
    infos.append(info("cron", "cron", "RUNNING", pid=20))
    state = ExporterState()
    handler = ExporterHandler(state, FakeSupervisor(infos), worker)
    handler.request_reconcile()
    assert worker.join()
    return state, handler


def memmon_says(handler: ExporterHandler, message: bus.Message) -> None:
    """Deliver ``message`` as memmon sends it: a REMOTE_COMMUNICATION of memmon's type."""
    handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.MEMMON_TYPE}\n{bus.encode(message)}"))


LIMITS = bus.MemoryLimits("h", {f"php:php_{i}": 64 << 20 for i in range(3)})


class TestUnreadableMetrics:
    def test_a_bus_message_becomes_the_count_and_per_process_series(self, exporter):
        """Two processes named: the count is 2, those two are 1, the other watched one is 0."""
        state, handler = exporter
        memmon_says(handler, LIMITS)
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_2", "php:php_0"]))
        reg = registry_for(state)
        assert 2 == val(reg, COUNT)
        assert 1 == val(reg, PER_PROCESS, group="php", name="php_0")
        assert 0 == val(reg, PER_PROCESS, group="php", name="php_1")
        assert 1 == val(reg, PER_PROCESS, group="php", name="php_2")
        # memmon does not watch cron (no ceiling, not named): no series for it
        assert val(reg, PER_PROCESS, group="cron", name="cron") is None
        text = Renderer().render(state.snapshot(), {})
        assert f"{COUNT} 2\n" in text
        assert f'{PER_PROCESS}{{group="php",name="php_0"}} 1\n' in text
        assert f'{PER_PROCESS}{{group="php",name="php_1"}} 0\n' in text

    def test_each_message_replaces_the_last_and_an_empty_list_clears(self, exporter):
        """A later message with other names replaces the set; an empty one brings 0 back."""
        state, handler = exporter
        memmon_says(handler, LIMITS)
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_0", "php:php_1"]))
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_2"]))
        reg = registry_for(state)
        assert 1 == val(reg, COUNT)
        assert 0 == val(reg, PER_PROCESS, group="php", name="php_0")
        assert 1 == val(reg, PER_PROCESS, group="php", name="php_2")
        memmon_says(handler, bus.ProcessesUnreadable("h", []))
        reg = registry_for(state)
        assert 0 == val(reg, COUNT)
        assert 0 == val(reg, PER_PROCESS, group="php", name="php_2")
        assert () == state.snapshot().memmon_unreadable

    def test_without_memmon_on_the_bus_the_count_is_absent(self, exporter):
        """No memmon message yet: no count (it would claim memmon reads everything)."""
        state, _ = exporter
        assert val(registry_for(state), COUNT) is None
        assert COUNT not in Renderer().render(state.snapshot(), {})

    def test_memmon_limits_alone_mean_it_reads_everything(self, exporter):
        """memmon announced its limits and nothing unreadable: the count is 0."""
        state, handler = exporter
        memmon_says(handler, LIMITS)
        assert 0 == val(registry_for(state), COUNT)

    def test_a_removed_group_leaves_the_list(self, exporter):
        """A group supervisord removed no longer counts as unreadable."""
        state, handler = exporter
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_0", "cron:cron"]))
        handler.handle(ev("PROCESS_GROUP_REMOVED", "groupname:php"))
        assert 1 == val(registry_for(state), COUNT)
        assert ("cron:cron",) == state.snapshot().memmon_unreadable


class TestUnreadableOnThePage:
    def test_the_page_warns_with_the_names_escaped(self, exporter):
        """The status page says how many memmon cannot read and which, escaped, with the fix."""
        state, handler = exporter
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_0", "php:<b>x</b>"]))
        page = render_status_page(state.snapshot(), {}, "http://x/", NOW)
        assert (
            "<p id=unreadable class=warn>memmon cannot read 2 processes: php:&lt;b&gt;x&lt;/b&gt;,"
            " php:php_0 (run memmon as the workers&#x27; user or root)</p>"
        ) in page
        assert "<b>x</b>" not in page

    def test_an_empty_list_clears_the_warning(self, exporter):
        """After memmon's empty list the warning is gone (the element stays, hidden, for JS)."""
        state, handler = exporter
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_0"]))
        assert "memmon cannot read 1 process: php:php_0" in render_status_page(
            state.snapshot(), {}, "http://x/", NOW
        )
        memmon_says(handler, bus.ProcessesUnreadable("h", []))
        page = render_status_page(state.snapshot(), {}, "http://x/", NOW)
        assert "memmon cannot read" not in page
        assert "<p id=unreadable class=warn hidden></p>" in page

    def test_api_status_carries_the_list_or_null(self, exporter):
        """/api/status has memmon_unreadable: null before memmon spoke, then its list."""
        state, handler = exporter
        assert json.loads(status_json(state.snapshot(), {}, NOW))["memmon_unreadable"] is None
        memmon_says(handler, bus.ProcessesUnreadable("h", ["php:php_1"]))
        doc = json.loads(status_json(state.snapshot(), {}, NOW))
        assert ["php:php_1"] == doc["memmon_unreadable"]

    def test_a_long_list_is_cut_with_a_count(self):
        """Past ten names the warning says how many more, so a line stays a line."""
        names = tuple(f"w:w_{i:02d}" for i in range(25))
        text = unreadable_warning(names)
        assert text.startswith("memmon cannot read 25 processes: w:w_00, w:w_01,")
        assert "w:w_09 and 15 more (run memmon" in text
        assert "w:w_10" not in text
        assert "" == unreadable_warning(()) == unreadable_warning(None)
