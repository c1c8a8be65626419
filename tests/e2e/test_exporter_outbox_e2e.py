"""crashmail's outbox trouble on the open status page, drawn by its script in real Chromium.

The message goes out as crashmail publishes it (``supervisor.sendRemoteCommEvent`` of type
``listeners.crashmail``), so the path is supervisord's REMOTE_COMMUNICATION dispatch to a real
exporter, /api/status, and status.js. The full-disk story itself (a real tmpfs, real crashes)
is in test_outbox_e2e.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from listeners.core import bus
from tests.e2e.support import PYTHON, WORKER, free_port, wait_for
from tests.e2e.test_exporter_e2e import exporter_conf, fetch
from tests.e2e.test_status_page_e2e import CHROMIUM, open_browser

PROGRAMS = textwrap.dedent(f"""
    [program:php]
    command={PYTHON} {WORKER} steady
    startsecs=0
    """)

WARNING = "(() => { const p = document.getElementById('outbox');"
WARNING += " return p && !p.hidden ? p.textContent : ''; })()"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
class TestLivePage:
    def test_the_open_page_shows_the_outage_and_clears_it_without_a_reload(self, supervisord):
        """The script draws the same sentence as the server (error as text, counts, fix) and
        hides it when crashmail says the outbox writes again, in the same document."""
        port = free_port()
        sup = supervisord(PROGRAMS + exporter_conf(port))
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        with open_browser() as browser:
            browser.goto(f"http://127.0.0.1:{port}/")
            assert "" == browser.eval(WARNING)
            browser.eval("window.sameDocument = 'yes'")
            trouble = bus.OutboxTrouble("h", True, "disk <i>full</i>", 1, 0)
            sup.client.send_remote_comm(bus.CRASHMAIL_TYPE, bus.encode(trouble))
            text = wait_for(lambda: browser.eval(WARNING), 60, 0.3, what="the warning drawn")
            assert (
                "crashmail cannot write its outbox (disk <i>full</i>): 1 alert kept in memory"
                " (free disk space or stop what holds the file locked; they are written once"
                " it can)"
            ) == text
            assert 0 == browser.eval("document.querySelectorAll('#outbox i').length")
            trouble = bus.OutboxTrouble("h", True, "disk full", 40, 3)
            sup.client.send_remote_comm(bus.CRASHMAIL_TYPE, bus.encode(trouble))
            wait_for(
                lambda: "40 alerts kept in memory, 3 lost" in browser.eval(WARNING),
                60,
                0.3,
                what="the figures moving",
            )
            done = bus.OutboxTrouble("h", False, "", 0, 0)
            sup.client.send_remote_comm(bus.CRASHMAIL_TYPE, bus.encode(done))
            wait_for(lambda: browser.eval(WARNING) == "", 60, 0.3, what="the warning cleared")
            assert "yes" == browser.eval("window.sameDocument")


DELIVERY = "(() => { const p = document.getElementById('delivery');"
DELIVERY += " return p && !p.hidden ? p.textContent : ''; })()"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
class TestLiveDeliveryWarning:
    def test_a_sink_that_fails_is_named_on_the_open_page_and_cleared_when_it_delivers(
        self, supervisord
    ):
        """crashmail's delivery health over the bus: the script names the failing sink, with
        the same sentence as the server, and removes it once nothing waits."""
        port = free_port()
        sup = supervisord(PROGRAMS + exporter_conf(port))
        wait_for(lambda: fetch(port, "/healthz") == "ok\n", 60, what="exporter serving")
        with open_browser() as browser:
            browser.goto(f"http://127.0.0.1:{port}/")
            assert "" == browser.eval(DELIVERY)
            stuck = bus.DeliveryHealth(
                host="h", pending={"smtp:<b>:25": 3, "file": 1}, failures={"smtp:<b>:25": 7}
            )
            sup.client.send_remote_comm(bus.CRASHMAIL_TYPE, bus.encode(stuck))
            text = wait_for(lambda: browser.eval(DELIVERY), 60, 0.3, what="the warning drawn")
            assert (
                "crashmail cannot deliver every alert (smtp:<b>:25: 3 waiting after 7 failed"
                " attempts); crashmail's log says why (outbox.delivery_failed), and they are"
                " sent once the sink takes them"
            ) == text
            assert 0 == browser.eval("document.querySelectorAll('#delivery b').length")
            done = bus.DeliveryHealth(host="h", pending={"smtp:<b>:25": 0}, failures={})
            sup.client.send_remote_comm(bus.CRASHMAIL_TYPE, bus.encode(done))
            wait_for(lambda: browser.eval(DELIVERY) == "", 60, 0.3, what="the warning cleared")
