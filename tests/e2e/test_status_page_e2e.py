"""The status page in real headless Chromium against a real supervisord and real workers.

Chromium is driven over its DevTools protocol (a websocket): navigate, evaluate, click,
screenshot. One supervisord and one browser serve the whole module.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from websockets.sync.client import connect

from listeners.core import bus
from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, wait_for

ROOT = Path(__file__).parents[2]
EVENTS = "PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,SUPERVISOR_STATE_CHANGE"
# supervisord refuses ':' and '/' in names; this one opens a tag and carries quotes.
NASTY = "<script>alert(\"x\")&amp;'q'"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
USERS = {"op": "op-secret", "viewer": "viewer-secret"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


def auth(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()


class Browser:
    """A headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1400,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for(port_file.exists, 30, what="Chromium's DevTools port")
        port = int(wait_for(lambda: port_file.read_text().split("\n")[0], 10))
        targets = wait_for(
            lambda: [
                t
                for t in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
                if t["type"] == "page"
            ],
            20,
        )
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        )
        self.ids = itertools.count(1)
        self.dialogs: list[str] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(msg["params"]["message"])
                self.ws.send(
                    json.dumps(
                        {
                            "id": next(self.ids),
                            "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": True},
                        }
                    )
                )
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def as_user(self, user: str | None) -> None:
        headers = {"Authorization": auth(user)} if user else {}
        self.call("Network.setExtraHTTPHeaders", headers=headers)

    def eval(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_for(lambda: self.eval("document.readyState") == "complete", 20, what=url)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def web_config(path: Path) -> Path:
    hashes = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode() for u, p in USERS.items()}
    path.write_text(
        "basic_auth_users:\n"
        + "".join(f"  {u}: '{h}'\n" for u, h in hashes.items())
        + "operators: [op]\n"
    )
    return path


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Supervisord, int]]:
    port = free_port()
    conf_dir = Path(tempfile.mkdtemp(prefix="sl-page-"))
    web = web_config(conf_dir / "web.yml")
    programs = textwrap.dedent(f"""
        [program:steady]
        command={PYTHON} {WORKER} steady
        numprocs=2
        process_name=%(program_name)s_%(process_num)d
        startsecs=0

        [program:victim]
        command={PYTHON} {WORKER} steady
        startsecs=0
        stopwaitsecs=2

        [program:fatal]
        command={PYTHON} {WORKER} crash --after 0.1 --code 4 --stderr "boom <b>&amp;"
        startsecs=1
        startretries=1

        [program:{NASTY}]
        command={PYTHON} {WORKER} steady
        startsecs=0

        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{port}
            --web.config.file {web} --reconcile-interval 2s --history-step 1s
            --grafana-url "https://grafana.example/d/w?var-group={{group}}&var-name={{name}}"
        events={EVENTS}
        buffer_size=1024
        environment=PYTHONPATH="{ROOT}"
        """)
    sup = Supervisord(programs).start()
    try:
        wait_for(lambda: http(port, "/healthz", "op")[0] == 200, 30, what="exporter serving")
        yield sup, port
    finally:
        sup.stop()
        bad = sup.bad_log_lines()
        shutil.rmtree(conf_dir, ignore_errors=True)
        if not bad:
            sup.cleanup()
    assert not bad, bad


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """A headless Chromium with a throw-away profile, closed and removed afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="sl-chromium-"))
    b = Browser(profile)
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with open_browser() as b:
        yield b


def http(port: int, path: str, user: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if user:
        req.add_header("Authorization", auth(user))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback http
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cell(browser: Browser, name: str, column: int) -> str:
    """Text of one column of a process's row (0 = process)."""
    return str(
        browser.eval(
            f"(() => {{ const r = [...document.querySelectorAll('#procs tbody tr')]"
            f".find(tr => tr.dataset.name === {json.dumps(name)});"
            f" return r ? r.cells[{column}].textContent : null; }})()"
        )
    )


PID, CRASHES = 2, 5


def pid_of(sup: Supervisord, name: str) -> int:
    return int(sup.client.process_info(name)["pid"])


class TestLive:
    def test_the_page_updates_without_a_reload_when_a_worker_crashes(self, stack, browser):
        """A killed worker's crash count rises on the open page; the document is the same one."""
        sup, port = stack
        browser.as_user("viewer")
        browser.goto(f"http://127.0.0.1:{port}/")
        wait_for(lambda: cell(browser, "victim:victim", PID) == str(pid_of(sup, "victim:victim")))
        assert "0" == cell(browser, "victim:victim", CRASHES)
        browser.eval("window.sameDocument = 'yes'")
        os.kill(pid_of(sup, "victim:victim"), signal.SIGKILL)
        wait_for(lambda: cell(browser, "victim:victim", CRASHES) == "1", 20, what="crash shown")
        assert "yes" == browser.eval("window.sameDocument")
        assert 0 == browser.eval("document.querySelectorAll('#procs form').length")

    def test_a_process_page_follows_a_crash_without_a_reload(self, stack, browser):
        """One process's page swaps in its new pid and the exit event in the same document."""
        sup, port = stack
        browser.as_user("viewer")
        browser.goto(f"http://127.0.0.1:{port}/process/victim:victim")
        pid = "document.querySelector('#detail dl.facts dd:nth-of-type(2)').textContent"
        before = pid_of(sup, "victim:victim")
        wait_for(lambda: browser.eval(pid) == str(before), 20, what="pid shown")
        browser.eval("window.sameDocument = 'yes'")
        os.kill(before, signal.SIGKILL)
        after = wait_for(
            lambda: (p := pid_of(sup, "victim:victim")) and p != before and p, 20, what="respawn"
        )
        wait_for(lambda: browser.eval(pid) == str(after), 30, what="new pid on the page")
        assert "yes" == browser.eval("window.sameDocument")
        assert "exited unexpectedly" in browser.eval(
            "document.querySelector('table.events').textContent"
        )

    def test_the_exporter_and_fatal_are_listed_fatal_first(self, stack, browser):
        """Every process is a row, the exporter included, the FATAL one first with its count."""
        _, port = stack
        browser.as_user("viewer")
        browser.goto(f"http://127.0.0.1:{port}/")
        fatal_count = "document.querySelector('li[data-count=fatal] b').textContent"
        wait_for(lambda: browser.eval(fatal_count) == "1", 30, what="one FATAL counted")
        first = "document.querySelector('#procs tbody tr').dataset.name"
        assert "fatal:fatal" == browser.eval(first)
        names = browser.eval(
            "[...document.querySelectorAll('#procs tbody tr')].map(r => r.dataset.name)"
        )
        assert {"exporter:exporter", "steady:steady_0", "steady:steady_1", "victim:victim"} <= set(
            names
        )


class TestActions:
    def test_an_operator_clicks_restart_and_the_pid_changes(self, stack, browser):
        """The restart button of an operator's page restarts the worker: a new pid, shown."""
        sup, port = stack
        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        before = pid_of(sup, "victim:victim")
        wait_for(lambda: cell(browser, "victim:victim", PID) == str(before))
        browser.eval(
            "document.querySelector('tr[data-name=\"victim:victim\"] button[value=restart]')"
            ".click()"
        )
        after = wait_for(
            lambda: (p := pid_of(sup, "victim:victim")) and p != before and p, 20, what="new pid"
        )
        wait_for(lambda: cell(browser, "victim:victim", PID) == str(after), 20, what="pid shown")
        events = http(port, "/process/victim:victim", "op")[1].decode()
        assert "restart requested by op (status page)" in events

    def test_a_post_without_the_token_is_refused_with_403(self, stack, browser):
        """An operator's POST that lacks the CSRF token is refused and says why."""
        sup, port = stack
        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        before = pid_of(sup, "victim:victim")
        status, text = browser.eval(
            "fetch('/action', {method: 'POST', headers: {'Content-Type':"
            " 'application/x-www-form-urlencoded'}, body: 'action=stop&process=victim:victim'})"
            ".then(async r => [r.status, await r.text()])"
        )
        assert 403 == status
        assert "CSRF token" in text
        assert before == pid_of(sup, "victim:victim")

    def test_a_viewer_sees_no_forms_and_is_refused(self, stack, browser):
        """A viewer's page has no forms; its POST, even with an operator's token, gets 403."""
        sup, port = stack
        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        token = browser.eval("document.querySelector('meta[name=csrf-token]').content")
        assert token
        browser.as_user("viewer")
        browser.goto(f"http://127.0.0.1:{port}/")
        assert 0 == browser.eval("document.querySelectorAll('form').length")
        assert "read-only" == browser.eval("document.body.dataset.role")
        before = pid_of(sup, "victim:victim")
        status, text = browser.eval(
            "fetch('/action', {method: 'POST', headers: {'Content-Type':"
            " 'application/x-www-form-urlencoded'}, body: 'action=stop&process=victim:victim"
            f"&csrf={token}'}}).then(async r => [r.status, await r.text()])"
        )
        assert 403 == status
        assert "is a viewer" in text
        assert before == pid_of(sup, "victim:victim")


class TestHostileNames:
    def test_script_and_quotes_in_a_name_render_as_text(self, stack, browser, tmp_path):
        """A process named <script>... shows its name as text, before and after a live redraw."""
        _, port = stack
        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        full = f"{NASTY}:{NASTY}"
        assert NASTY == cell(browser, full, 0)
        first = browser.eval("document.body.dataset.updated || ''")
        wait_for(lambda: browser.eval("document.body.dataset.updated || ''") != first, 20)
        assert NASTY == cell(browser, full, 0)
        assert 1 == browser.eval("document.scripts.length")
        assert [] == browser.dialogs
        browser.goto(f"http://127.0.0.1:{port}/process/fatal:fatal")
        tail = browser.eval(
            "document.querySelector('pre.tail') && document.querySelector('pre.tail').textContent"
        )
        assert tail is None or "<b>" in tail
        assert 0 == browser.eval("document.querySelectorAll('pre.tail b').length")

    def test_memmon_news_shows_in_the_counts_and_the_screenshot(self, stack, browser, tmp_path):
        """memmon's ceilings and give-ups reach the counts; the page is captured as a PNG."""
        sup, port = stack
        limits = {
            "victim:victim": 8 << 20,
            "steady:steady_0": 16 << 20,
            "steady:steady_1": 16 << 20,
        }
        sup.client.send_remote_comm(
            bus.MEMMON_TYPE, bus.encode(bus.MemoryLimits(host="h", limits=limits))
        )
        gave_up = bus.RestartsExhausted(
            host="h",
            group="steady",
            name="steady_1",
            restarts=5,
            window_seconds=600,
            measured_bytes=20 << 20,
            limit_bytes=16 << 20,
        )
        sup.client.send_remote_comm(bus.MEMMON_TYPE, bus.encode(gave_up))
        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        count = "document.querySelector('li[data-count={}] b').textContent"
        wait_for(lambda: browser.eval(count.format("memory_gave_up")) == "1", 20)
        wait_for(lambda: browser.eval(count.format("over_ceiling")) == "1", 20)
        assert "steady:steady_1" in cell(browser, "steady:steady_1", 0)
        assert "over" in cell(browser, "victim:victim", 4)
        shot = tmp_path / "status.png"
        browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        chart = "document.querySelector('svg.chart > polyline.mem')"

        def drawn() -> bool:
            browser.goto(f"http://127.0.0.1:{port}/process/victim:victim")
            return bool(browser.eval(f"{chart} && {chart}.getBBox().width > 0"))

        wait_for(drawn, 20, what="a memory line drawn in the chart")
        assert browser.eval("document.querySelector('svg.chart > line.ceiling') !== null")
        assert "grafana.example" in browser.eval("document.body.innerHTML")
        detail = tmp_path / "process.png"
        browser.screenshot(detail)
        if os.environ.get("SAVE_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "status-page.png")
            shutil.copy(detail, ROOT / "docs" / "status-process.png")


def task(name: str) -> str:
    return f"[program:{name}]\ncommand={PYTHON} {WORKER} steady\nstartsecs=0\nstopwaitsecs=2\n"


class TestTasks:
    def test_an_operator_disables_and_enables_tasks_from_the_page(self, supervisord, browser):
        """disable moves mailer out and supervisord drops it; enable brings reports up."""
        port = free_port()
        sup: Supervisord = supervisord("", start=False)
        web = web_config(sup.dir / "web.yml")
        exporter = textwrap.dedent(f"""
            [eventlistener:exporter]
            command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{port}
                --web.config.file {web} --tasks-conf {sup.conf} --reconcile-interval 1s
            events={EVENTS}
            buffer_size=1024
            environment=PYTHONPATH="{ROOT}"
            """)
        sup.write_conf(exporter, "[include]\nfiles = tasks/*.conf\n")
        for sub in ("tasks", "tasks_disabled"):
            (sup.dir / sub).mkdir()
        (sup.dir / "tasks" / "mailer.conf").write_text(task("mailer"))
        (sup.dir / "tasks_disabled" / "reports.conf").write_text(task("reports"))
        sup.start()
        wait_for(lambda: http(port, "/healthz", "op")[0] == 200, 30, what="exporter serving")

        def groups() -> set[str]:
            return {i["group"] for i in sup.client.all_process_info()}

        browser.as_user("op")
        browser.goto(f"http://127.0.0.1:{port}/")
        browser.eval("document.querySelector('tr[data-task=mailer] button[value=disable]').click()")
        wait_for(lambda: "mailer" not in groups(), 30, what="mailer removed")
        assert (sup.dir / "tasks_disabled" / "mailer.conf").is_file()
        wait_for(lambda: browser.eval("document.readyState") == "complete", 20)
        browser.goto(f"http://127.0.0.1:{port}/")
        browser.eval("document.querySelector('tr[data-task=reports] button[value=enable]').click()")
        wait_for(lambda: sup.state("reports:reports") == "RUNNING", 30, what="reports running")
        assert (sup.dir / "tasks" / "reports.conf").is_file()


class TestStale:
    """The open page tells the truth when its sources go away and come back."""

    @staticmethod
    def _stack(supervisord: Any) -> tuple[Supervisord, int]:
        port = free_port()
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [program:steady]
            command={PYTHON} {WORKER} steady
            startsecs=0

            [eventlistener:exporter]
            command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{port}
                --reconcile-interval 1s --rpc-timeout 1s
            events={EVENTS}
            buffer_size=64
            environment=PYTHONPATH="{ROOT}"
            """)
        )
        wait_for(lambda: http(port, "/healthz")[0] == 200, 30, what="exporter serving")
        return sup, port

    def test_a_stopped_exporter_is_said_on_the_open_page(self, supervisord, browser):
        """The exporter goes away: within seconds the page says since when it has had no
        answer, instead of "supervisord is up" over a table that no longer moves."""
        sup, port = self._stack(supervisord)
        browser.as_user(None)
        browser.goto(f"http://127.0.0.1:{port}/")
        up = "document.getElementById('up').textContent"
        wait_for(lambda: "is up" in browser.eval(up), 20, what="the page live")
        sup.client.call("supervisor.stopProcess", "exporter:exporter", True)
        said = wait_for(
            lambda: (t := browser.eval(up)) and "no answer from the exporter since" in t and t,
            20,
            0.3,
            what="the page saying the exporter is gone",
        )
        assert "the figures below are from then" in said

    def test_a_page_opened_while_supervisord_was_down_comes_back_by_itself(
        self, supervisord, browser
    ):
        """Opened while supervisord did not answer (no table drawn): once supervisord is
        back the page reloads itself and shows the processes."""
        sup, port = self._stack(supervisord)
        assert sup.proc is not None
        os.kill(sup.proc.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: json.loads(http(port, "/api/status")[1])["supervisord"]["up"] is False,
                30,
                0.3,
                what="the exporter seeing supervisord down",
            )
            browser.as_user(None)
            browser.goto(f"http://127.0.0.1:{port}/")
            assert browser.eval("document.getElementById('procs') === null")
        finally:
            os.kill(sup.proc.pid, signal.SIGCONT)
        wait_for(
            lambda: browser.eval("document.querySelector('#procs tr[data-name=\"steady:steady\"]')"
                                 " !== null"),
            30,
            0.3,
            what="the table after supervisord came back",
        )  # fmt: skip
