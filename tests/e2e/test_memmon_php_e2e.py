"""memmon and real PHP workers (Debian's php8.2-cli) under a real supervisord.

An idle PHP worker has 17.5 MiB RSS (the interpreter's shared libraries) but 4.4 MiB PSS with
32 siblings: the shipped conf measures PSS, and memmon's guard holds a ceiling that would
restart a whole group at once.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.support import Supervisord, wait_for
from tests.e2e.test_memmon_e2e import bus_conf, memmon_conf, messages, pids, started

pytestmark = pytest.mark.skipif(shutil.which("php") is None, reason="php-cli is not installed")

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "example" / "docker" / "supervisord" / "listeners.d" / "memmon.conf"
IDLE = "php -d memory_limit=16M -r 'while (true) { sleep(1); }'"
# A queue worker whose command line names a listener, and whose memory grows past any
# memory_limit (memory_limit=-1): 2 MB every 0.1 s up to 48 MB, then it holds.
ARTISAN = """<?php
$hoard = [];
while (true) {
    if (count($hoard) < 24) { $hoard[] = str_repeat('x', 2 * 1024 * 1024); }
    usleep(100000);
}
"""


def php_group(name: str, command: str, numprocs: int) -> str:
    return f"""
        [program:{name}]
        command={command}
        numprocs={numprocs}
        process_name=%(program_name)s_%(process_num)02d
        startsecs=1
        autorestart=true
        stopwaitsecs=5
        """


def shipped_memmon(log: Path) -> str:
    """The example's [eventlistener:memmon] exactly, with the venv's console script."""
    text = SHIPPED.read_text()
    command = re.search(r"^command=(.*)$", text, re.M)
    assert command is not None
    script = Path(sys.executable).with_name("supervisor-memmon")
    return f"""
        [eventlistener:memmon]
        command={command.group(1).replace("supervisor-memmon", str(script), 1)}
        events=PROCESS_STATE,TICK_5
        buffer_size=1024
        startsecs=1
        stderr_logfile={log}
        stderr_logfile_maxbytes=0
        """


def log_events(log: Path, name: str) -> int:
    return log.read_text().count(f'"event": "{name}"') if log.exists() else 0


class TestPhpWorkers:
    def test_32_idle_php_workers_on_rss_are_held_and_said_so(self, supervisord, tmp_path):
        """-a 16MB --measure rss over 32 idle PHP workers: nothing restarted, one alert, one
        start-up warning that the ceiling looks wrong."""
        log, bus_out = tmp_path / "memmon.log", tmp_path / "bus.txt"
        sup = supervisord(
            php_group("php_mail", IDLE, 32)
            + memmon_conf("-a 16MB --measure rss --interval 0.5", log)
            + bus_conf(bus_out)
        )
        names = [f"php_mail:php_mail_{i:02d}" for i in range(32)]
        sup.wait_all("RUNNING", names=names, timeout=60)
        wait_for(lambda: started(log), what="memmon started")
        held = wait_for(
            lambda: [m for m in messages(bus_out) if m["kind"] == "restarts_held"],
            30,
            what="restarts_held on the bus",
        )
        before = pids(sup)
        time.sleep(3)  # six more checks at 0.5 s, every worker still over 16 MB RSS
        assert 1 == len([m for m in messages(bus_out) if m["kind"] == "restarts_held"])
        # the guard fires on the first check that finds most of the judged processes over:
        # workers still STARTING then are not judged yet (a busy CI host saw 16 of 32), so the
        # message names how many it judged; most of those were over (a worker still loading
        # PHP can be under 16 MB for a moment: a loaded CI host saw 31 of 32)
        assert "php_mail" == held[0]["group"]
        assert held[0]["judged"] >= 1
        assert held[0]["judged"] >= held[0]["over"] > held[0]["judged"] / 2
        assert [] == [m for m in messages(bus_out) if m["kind"] == "memory_restart"]
        after = pids(sup)
        assert [] == [n for n in names if before[n] != after[n]]
        assert 1 == log_events(log, "memmon.restarts_held")
        assert "try --measure pss" in log.read_text()

    def test_the_shipped_conf_leaves_idle_php_alone_and_restarts_the_leaker(
        self, supervisord, tmp_path
    ):
        """The example's memmon line (PSS): 32 idle PHP workers and the listeners keep their
        pids for 30 s (30 of memmon's 1 s checks, past its 5 s grace); a leaking worker whose
        command line names a listener is restarted."""
        log, bus_out = tmp_path / "memmon.log", tmp_path / "bus.txt"
        (tmp_path / "artisan").write_text(ARTISAN)
        queue = f"php -d memory_limit=-1 {tmp_path}/artisan queue:work --queue crashmail"
        sup: Supervisord = supervisord(
            php_group("php_mail", IDLE, 32)
            + php_group("crashmail_queue", queue, 1)
            + shipped_memmon(log)
            + bus_conf(bus_out)
        )
        names = [f"php_mail:php_mail_{i:02d}" for i in range(32)]
        sup.wait_all("RUNNING", names=names, timeout=60)
        wait_for(lambda: started(log), what="memmon started")
        begun = time.monotonic()
        before = pids(sup)
        leaker = "crashmail_queue:crashmail_queue_00"
        wait_for(lambda: pids(sup)[leaker] not in (0, before[leaker]), 40, what="leaker restart")
        time.sleep(max(0.0, 30 - (time.monotonic() - begun)))
        after = pids(sup)
        restarts = [m for m in messages(bus_out) if m["kind"] == "memory_restart"]
        assert {"crashmail_queue"} == {m["group"] for m in restarts}
        assert "pss" == restarts[0]["measure"]
        assert [] == [n for n in names if before[n] != after[n]]
        for key in ("memmon:memmon", "busrec:busrec"):
            assert before[key] == after[key]
        limits = [m for m in messages(bus_out) if m["kind"] == "memory_limits"][-1]["limits"]
        assert "busrec:busrec" not in limits
        assert leaker in limits
        assert [] == [m for m in messages(bus_out) if m["kind"] == "restarts_held"]
        assert 0 == log_events(log, "memmon.listeners_unknown")


class TestExporterJudgesAsMemmon:
    def test_idle_php_under_the_shipped_pss_ceiling_is_not_over_it_on_the_page(
        self, supervisord, tmp_path
    ):
        """The shipped memmon (PSS, 16 MB) and a real exporter over 8 idle PHP workers: each
        has more RSS (the tree's, what memory_bytes says) than memmon's ceiling, but the
        exporter compares the ceiling with PSS as memmon does: judged bytes under the
        ceiling, nothing over it in /api/status, and memmon restarted none of them."""
        from tests.e2e.support import free_port
        from tests.e2e.test_exporter_e2e import exporter_conf, fetch, samples

        port = free_port()
        log = tmp_path / "memmon.log"
        sup: Supervisord = supervisord(
            # php_group's and shipped_memmon's text is indented: dedent it before the
            # exporter's, which is not, or supervisord reads it as continuation lines
            textwrap.dedent(php_group("php_mail", IDLE, 8) + shipped_memmon(log))
            + exporter_conf(port)
        )
        names = [f"php_mail_{i:02d}" for i in range(8)]
        sup.wait_all("RUNNING", names=[f"php_mail:{n}" for n in names], timeout=60)
        wait_for(lambda: started(log), what="memmon started")
        judged = "supervisord_process_memory_judged_bytes"

        def figures() -> dict[str, tuple[float, float, float]] | None:
            got = samples(fetch(port))
            out = {}
            for n in names:
                labels = frozenset({"group": "php_mail", "name": n}.items())
                row = [
                    got.get((m, labels))
                    for m in (
                        "supervisord_process_memory_bytes",
                        judged,
                        "supervisord_process_memory_limit_bytes",
                    )
                ]
                if None in row:
                    return None
                out[n] = (row[0], row[1], row[2])
            return out

        seen = wait_for(figures, 60, 0.5, what="judged memory of every PHP worker")
        for name, (rss, pss, limit) in seen.items():
            assert limit == 16 << 20, name
            assert 0 < pss < limit, (name, pss)
            assert pss < rss, (name, pss, rss)
        doc = json.loads(fetch(port, "/api/status"))
        assert 0 == doc["counts"]["over_ceiling"], doc["counts"]
        rows = {p["name"]: p for p in doc["processes"] if p["group"] == "php_mail"}
        for name in names:
            assert rows[name]["over_ceiling"] is False
            assert 0 < rows[name]["headroom_bytes"] < 16 << 20
            assert rows[name]["memory_judged_bytes"] < rows[name]["memory_bytes"]
        assert 0 == log_events(log, "memmon.restarted")
        self._the_live_page_draws_the_judged_memory(port)

    @staticmethod
    def _the_live_page_draws_the_judged_memory(port: int) -> None:
        """In Chromium, after the script has redrawn the table from /api/status, a PHP
        worker's memory cell still says "free" under the ceiling, as the server drew it
        (it drew the tree's RSS, 17.5 MiB, "over" a 16 MiB ceiling before)."""
        from tests.e2e.test_status_page_e2e import CHROMIUM, open_browser

        if not Path(CHROMIUM).exists():
            return  # the metrics and JSON above were checked; the page needs Debian's chromium
        cell = (
            "(() => { const r = document.querySelector('tr[data-name=\"php_mail:php_mail_00\"]');"
            " return r ? r.children[4].textContent : ''; })()"
        )
        with open_browser() as browser:
            browser.goto(f"http://127.0.0.1:{port}/")
            served = browser.eval("document.body.dataset.updated || ''")
            wait_for(
                lambda: browser.eval("document.body.dataset.updated || ''") not in ("", served),
                30,
                0.3,
                what="the script's redraw",
            )
            text = browser.eval(cell)
        assert "/ 16" in text, text
        assert "free" in text, text
        assert "over" not in text, text
