"""crashmail's outbox trouble in the exporter: a full disk or a held lock, in metrics and on a page.

crashmail keeps new alerts in memory while it cannot write its outbox and says so on supervisord's
bus (``OutboxTrouble``: failing, then the figures as they move, then recovered). Its delivery
health (``DeliveryHealth``) says crashmail runs, so the gauges read 0 before any trouble.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from listeners.core import bus
from listeners.core.background import Worker
from listeners.exporter import ExporterHandler
from listeners.metrics.api import status_json
from listeners.metrics.page import outbox_warning, render_status_page
from listeners.metrics.render import Renderer
from listeners.metrics.snapshot import OutboxView
from listeners.metrics.state import ExporterState
from tests.fakes import FakeSupervisor
from tests.test_exporter import ev, info, registry_for, val

FAILING = "supervisor_listeners_outbox_failing"
SPOOLED = "supervisor_listeners_outbox_spooled_alerts"
DROPPED = "supervisor_listeners_outbox_dropped_alerts"
NOW = 1_800_000_000.0
FULL = "database or disk is full"


@pytest.fixture
def exporter() -> Iterator[tuple[ExporterState, ExporterHandler]]:
    """An exporter that has read one RUNNING process from a fake supervisord."""
    background = Worker("test")
    state = ExporterState()
    rpc = FakeSupervisor([info("php", "php_0", "RUNNING")])
    handler = ExporterHandler(state, rpc, background)
    handler.request_reconcile()
    assert background.join()
    yield state, handler
    background.close()


def crashmail_says(handler: ExporterHandler, message: bus.Message) -> None:
    """Deliver ``message`` as crashmail sends it: a REMOTE_COMMUNICATION of crashmail's type."""
    handler.handle(ev("REMOTE_COMMUNICATION", f"type:{bus.CRASHMAIL_TYPE}\n{bus.encode(message)}"))


class TestOutboxMetrics:
    def test_no_series_before_crashmail_spoke(self, exporter):
        """Without crashmail on this supervisord there is nothing to say: no outbox series."""
        state, _ = exporter
        reg = registry_for(state)
        assert (val(reg, FAILING), val(reg, SPOOLED), val(reg, DROPPED)) == (None, None, None)
        assert FAILING not in Renderer().render(state.snapshot(), {})

    def test_delivery_health_alone_says_the_outbox_writes(self, exporter):
        """crashmail's delivery health arrives first: the outbox gauges read 0, 0, 0."""
        state, handler = exporter
        crashmail_says(handler, bus.DeliveryHealth("h", {"mail": 0}, {"mail": 0}))
        reg = registry_for(state)
        assert (val(reg, FAILING), val(reg, SPOOLED), val(reg, DROPPED)) == (0, 0, 0)

    def test_trouble_then_figures_then_recovery_in_both_renderers(self, exporter):
        """failing 1 with the figures as they move; recovery brings every gauge back to 0,
        and a later delivery health message does not hide a trouble that is still on."""
        state, handler = exporter
        crashmail_says(handler, bus.OutboxTrouble("h", True, FULL, 1, 0))
        crashmail_says(handler, bus.OutboxTrouble("h", True, FULL, 6, 2))
        crashmail_says(handler, bus.DeliveryHealth("h", {"mail": 0}, {"mail": 0}))
        reg = registry_for(state)
        assert (val(reg, FAILING), val(reg, SPOOLED), val(reg, DROPPED)) == (1, 6, 2)
        text = Renderer().render(state.snapshot(), {})
        for line in (f"{FAILING} 1\n", f"{SPOOLED} 6\n", f"{DROPPED} 2\n"):
            assert line in text
        assert f"# TYPE {FAILING} gauge\n" in text
        crashmail_says(handler, bus.OutboxTrouble("h", False, "", 0, 0))
        reg = registry_for(state)
        assert (val(reg, FAILING), val(reg, SPOOLED), val(reg, DROPPED)) == (0, 0, 0)
        assert f"{FAILING} 0\n" in Renderer().render(state.snapshot(), {})


class TestOutboxOnThePage:
    def test_the_page_says_what_is_wrong_how_many_wait_and_what_to_do(self, exporter):
        """The warning names the error, the count in memory, the loss, and the fix, escaped."""
        state, handler = exporter
        crashmail_says(handler, bus.OutboxTrouble("h", True, "disk <full>", 3, 1))
        page = render_status_page(state.snapshot(), {}, "http://x/", NOW)
        assert (
            "<p id=outbox class=warn>crashmail cannot write its outbox (disk &lt;full&gt;):"
            " 3 alerts kept in memory, 1 lost (free disk space or stop what holds the file"
            " locked; they are written once it can)</p>"
        ) in page
        assert "<full>" not in page

    def test_recovery_hides_the_warning_and_api_status_follows(self, exporter):
        """After recovery the element stays, hidden, for the script; /api/status has the view."""
        state, handler = exporter
        assert json.loads(status_json(state.snapshot(), {}, NOW))["outbox"] is None
        crashmail_says(handler, bus.OutboxTrouble("h", True, FULL, 1, 0))
        doc = json.loads(status_json(state.snapshot(), {}, NOW))
        assert {"failing": True, "error": FULL, "spooled": 1, "dropped": 0} == doc["outbox"]
        crashmail_says(handler, bus.OutboxTrouble("h", False, "", 0, 0))
        page = render_status_page(state.snapshot(), {}, "http://x/", NOW)
        assert "<p id=outbox class=warn hidden></p>" in page
        assert json.loads(status_json(state.snapshot(), {}, NOW))["outbox"]["failing"] is False

    def test_the_sentence_counts_one_alert_in_the_singular_and_omits_no_loss(self):
        """One alert, nothing lost: "1 alert kept in memory" and no ", 0 lost"."""
        text = outbox_warning(OutboxView(True, FULL, 1, 0))
        assert text.startswith(f"crashmail cannot write its outbox ({FULL}): 1 alert kept in")
        assert "lost" not in text
        assert "" == outbox_warning(None) == outbox_warning(OutboxView())
