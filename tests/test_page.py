"""The status page: rows by trouble, counts, JSON, per-process view, actions and their guards."""

from __future__ import annotations

import base64
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from listeners.core import bus
from listeners.core.supervisor import SupervisorError
from listeners.metrics import api
from listeners.metrics.actions import Actions, Csrf, Refused
from listeners.metrics.history import History
from listeners.metrics.page import Viewer, memory_chart, render_process_page, render_status_page
from listeners.metrics.proc import ProcReader
from listeners.metrics.routes import Site, basic_user, handle_get, handle_post
from listeners.metrics.snapshot import ProcessView, Snapshot, Usage
from listeners.metrics.state import ExporterState
from listeners.metrics.web import load_web_config, make_server
from tests.fakes import FakeSupervisor, make_event

NOW = 1_800_000_000.0


def step(state: ExporterState, new: str, old: str, name: str = "q", **extra: Any) -> None:
    """Feed one PROCESS_STATE event from ``old`` to ``new``."""
    tokens = [f"processname:{name}", f"groupname:{name}", f"from_state:{old}"]
    tokens += [f"{k}:{v}" for k, v in extra.items()]
    event = make_event(f"PROCESS_STATE_{new}", " ".join(tokens))
    state.apply_process(event)  # type: ignore[arg-type]


def running(name: str = "w") -> ExporterState:
    state = ExporterState()
    info = {"group": name, "name": name, "statename": "RUNNING", "pid": 3, "start": NOW}
    state.apply_reconcile([info], "4.3.0", "host-a")
    return state


HOST = "127.0.0.1:9876"
GOOD = {"Host": HOST, "Origin": f"http://{HOST}"}


def view(name: str, state: str = "RUNNING", **kw: Any) -> ProcessView:
    base: dict[str, Any] = {
        "group": name,
        "name": name,
        "state": state,
        "pid": 10 if state == "RUNNING" else None,
        "start_time": NOW - 3725 if state == "RUNNING" else None,
        "exit_status": None,
        "restarts": 0,
        "unexpected_exits": 0,
        "fatal": 0,
        "memory_limit": None,
        "memory_restarts": 0,
        "crash_looping": False,
    }
    base.update(kw)
    return ProcessView(**base)


def snapshot(*procs: ProcessView) -> Snapshot:
    return Snapshot(True, "4.3.0", "host-a", procs, 0, 0, 0)


MIXED = snapshot(
    view("calm"),
    view("dead", "FATAL", fatal=1),
    view("fat", memory_limit=16 << 20),
    view("gaveup", memory_gave_up=True, memory_limit=16 << 20),
    view("loop", crash_looping=True, unexpected_exits=4),
    view("wait", "BACKOFF"),
    view("off", "STOPPED"),
    view("queue", planned_exits=36, exit_status=0),
)
USAGES = {"fat:fat": Usage(20 << 20, 1.0), "gaveup:gaveup": Usage(60 << 20, 1.0)}


class TestRows:
    def test_rows_are_ordered_by_trouble_then_name(self):
        """FATAL, crash loop, memmon gave up, over the ceiling, backoff, then calm ones."""
        names = [r.full_name for r in api.rows(MIXED, USAGES)]
        assert [
            "dead:dead",
            "loop:loop",
            "gaveup:gaveup",
            "fat:fat",
            "wait:wait",
            "off:off",
            "calm:calm",
            "queue:queue",
        ] == names

    def test_counts_say_what_is_known_and_null_for_absent_sources(self):
        """Counts per kind of trouble; hung and undelivered alerts are null without a source."""
        counts = api.summary(MIXED, api.rows(MIXED, USAGES))
        assert {
            "fatal": 1,
            "crash_looping": 1,
            "memory_gave_up": 1,
            "over_ceiling": 2,
            "hung": None,
            "backoff": 1,
            "alerts_undelivered": None,
            "running": 5,
        } == counts

    def test_json_document_has_restarts_by_cause_uptime_and_headroom(self):
        """/api/status carries each process's restarts split by cause, uptime and headroom."""
        doc = json.loads(api.status_json(MIXED, USAGES, NOW))
        assert 1 == doc["version"]
        fat = next(p for p in doc["processes"] if p["name"] == "fat")
        assert -(4 << 20) == fat["headroom_bytes"]
        assert 3725.0 == fat["uptime_seconds"]
        queue = next(p for p in doc["processes"] if p["name"] == "queue")
        assert {"total": 0, "crash": 0, "memory": 0, "probe": None, "planned": 36} == queue[
            "restarts"
        ]
        assert doc["supervisord"]["up"] is True


class TestStatusPage:
    def test_counts_rows_and_exit_status_are_shown(self):
        """The header shows the counts; the last exit reads 'exit status N'."""
        page = render_status_page(MIXED, USAGES, "http://x/", NOW)
        assert '<li class="count bad" data-count="fatal"><b>1</b> FATAL</li>' in page
        assert '<li class="count" data-count="hung"><b>&ndash;</b> hung</li>' in page
        assert "exit status 0" in page
        assert "4.0MiB over" in page
        assert "1h 02m" in page
        assert page.index('data-name="dead:dead"') < page.index('data-name="calm:calm"')

    def test_a_viewer_gets_no_forms_and_an_operator_gets_tokened_forms(self):
        """Forms (with the token) only for an operator; viewers get none and no token."""
        viewer_page = render_status_page(MIXED, USAGES, "http://x/", NOW, Viewer("v"))
        assert "<form" not in viewer_page
        assert "csrf-token" not in viewer_page
        op_page = render_status_page(MIXED, USAGES, "http://x/", NOW, Viewer("op", "tok123"))
        assert op_page.count("<form") == 3 * len(MIXED.processes)
        assert 'name=csrf value="tok123"' in op_page

    def test_script_is_same_origin_only_with_a_noscript_refresh(self):
        """One external same-origin script, no inline script, a meta refresh without script."""
        page = render_status_page(MIXED, USAGES, "http://x/", NOW)
        assert page.count("<script") == 1
        assert '<script src="/static/status.js" defer></script>' in page
        assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page

    def test_hostile_names_are_text(self):
        """A name with a tag and quotes is escaped in the text, the link and the data attribute."""
        nasty = view('<script>"x"', group="g'h")
        page = render_status_page(snapshot(nasty), {}, "http://x/", NOW, Viewer("op", "t"))
        assert '<script>"x"' not in page
        assert "g&#x27;h:&lt;script&gt;&quot;x&quot;" in page


class TestProcessPage:
    def test_events_chart_tail_and_links(self):
        """The view lists events, draws memory against the ceiling, escapes the stderr tail."""
        row = api.rows(snapshot(view("w", memory_limit=16 << 20)), {"w:w": Usage(8 << 20, 0)})[0]
        page = render_process_page(
            row,
            "w:w",
            events=[(NOW - 5, "exited", "exited <unexpectedly>")],
            samples=[(NOW - 600, 4 << 20), (NOW - 5, 8 << 20)],
            stderr_tail="PHP Fatal error: <b>x</b>",
            dashboard_url="http://127.0.0.1:8080/",
            grafana_url="https://g/d?var-group={group}&var-name={name}",
            now=NOW,
        )
        assert "exited &lt;unexpectedly&gt;" in page
        assert "PHP Fatal error: &lt;b&gt;x&lt;/b&gt;" in page
        assert '<a href="https://g/d?var-group=w&amp;var-name=w">Grafana panel</a>' in page
        assert "<polyline class=mem" in page
        assert "ceiling 16.0MiB" in page

    def test_unknown_process_is_404(self):
        """A name supervisord does not have gets 404 and says so."""
        site = Site(state=ExporterState(), reader=ProcReader(), dashboard_url="http://x/")
        answer = handle_get(site, "/process/nope:nope", None)
        assert answer is not None
        assert 404 == answer.code
        assert b"no such process" in answer.body

    def test_chart_without_samples_says_so(self):
        """No samples yet: a sentence, not an empty chart."""
        assert "no memory samples yet" in memory_chart([], None, NOW)


class TestHistory:
    def test_rings_are_bounded_and_cut_at_the_span(self):
        """Samples older than the span are not returned; events keep only the newest N."""
        h = History(span=60, step=10, events=3, clock=lambda: NOW)
        for i in range(20):
            h.add_samples({"a:a": i}, at=NOW - 200 + i * 10)
            h.record("a:a", "k", f"e{i}")
        assert [s.memory_bytes for s in h.samples("a:a")] == [14, 15, 16, 17, 18, 19]
        assert ["e19", "e18", "e17"] == [e.text for e in h.events("a:a")]
        h.forget(["a:a"])
        assert [] == h.events("a:a")

    def test_state_records_transitions_planned_exits_and_memmon_news(self):
        """Planned exits count apart from crashes; memmon's give-up marks the process."""
        state = ExporterState()
        step(state, "STARTING", "STOPPED")
        step(state, "RUNNING", "STARTING", pid=5)
        step(state, "EXITED", "RUNNING", pid=5, expected=1)
        exhausted = bus.RestartsExhausted("h", "q", "q", 5, 600.0, 60 << 20, 16 << 20)
        state.apply_bus(exhausted)
        (p,) = state.snapshot().processes
        assert (1, 0, True) == (p.planned_exits, p.unexpected_exits, p.memory_gave_up)
        kinds = [e.kind for e in state.history.events("q:q")]
        assert ["memmon", "exited", "running", "starting"] == kinds


def make_actions(**kw: Any) -> tuple[Actions, FakeSupervisor, History]:
    rpc = FakeSupervisor({"w:w": {"statename": "RUNNING"}})
    history = History()
    options: dict[str, Any] = {
        "operators": frozenset({"op"}),
        "auth": True,
        "history": history,
        "self_name": "exporter:exporter",
        "csrf": Csrf(b"k" * 32),
        "host": "h",
        "run": lambda fn: fn(),
    }
    options.update(kw)
    return Actions(rpc, **options), rpc, history


KNOWN = {"w:w", "exporter:exporter"}


class TestActions:
    def test_an_operator_restart_stops_starts_logs_and_announces(self):
        """A valid request stops then starts, records the action and publishes it on the bus."""
        actions, rpc, history = make_actions()
        token = actions.viewer("op").csrf
        form = {"csrf": token or "", "action": "restart", "process": "w:w"}
        assert "restart of w:w requested" == actions.perform("op", GOOD, form, KNOWN)
        assert ["stop", "start", "send_remote_comm"] == [c[0] for c in rpc.calls]
        sent = bus.decode(rpc.calls[2][1][1])
        assert bus.ActionPerformed("h", "w", "w", "restart", "op") == sent
        assert rpc.calls[2][1][0] == bus.ACTIONS_TYPE
        assert "restart requested by op (status page)" == history.events("w:w")[0].text

    @pytest.mark.parametrize(
        ("user", "headers", "token", "needle"),
        [
            ("viewer", GOOD, "op", "is a viewer"),
            (None, GOOD, "op", "is a viewer"),
            ("op", {"Host": HOST, "Origin": "http://evil.example"}, "op", "cross-origin"),
            ("op", {"Host": HOST, "Referer": "http://evil.example/"}, "op", "Referer"),
            ("op", {"Host": HOST, "Origin": "null", "Referer": f"http://{HOST}/"}, "op", "null"),
            ("op", {"Host": HOST}, "op", "neither Origin nor Referer"),
            ("op", GOOD, "", "CSRF token"),
            ("op", GOOD, "viewer", "CSRF token"),
        ],
    )
    def test_refusals_are_403_with_a_reason(self, user, headers, token, needle):
        """Viewers, other origins, a missing or someone else's token: 403 saying why."""
        actions, rpc, _ = make_actions()
        tok = Csrf(b"k" * 32).token(token) if token else ""
        with pytest.raises(Refused) as info:
            actions.perform(user, headers, {"csrf": tok, "action": "stop", "process": "w:w"}, KNOWN)
        assert 403 == info.value.code
        assert needle in info.value.reason
        assert [] == rpc.calls

    def test_a_token_from_an_earlier_run_is_refused(self):
        """Tokens are bound to this run's secret: a restarted exporter refuses old pages."""
        old = Csrf().token("op")
        actions, _, _ = make_actions(csrf=Csrf())
        form = {"csrf": old, "action": "stop", "process": "w:w"}
        with pytest.raises(Refused, match="CSRF"):
            actions.perform("op", GOOD, form, KNOWN)

    @pytest.mark.parametrize(
        ("action", "process", "code", "needle"),
        [
            ("reboot", "w:w", 400, "unknown action"),
            ("stop", "x:x", 404, "no process"),
            ("stop", "exporter:exporter", 403, "itself"),
        ],
    )
    def test_bad_actions_and_the_exporter_itself(self, action, process, code, needle):
        """Unknown actions, unknown processes and the exporter itself are refused."""
        actions, rpc, _ = make_actions()
        form = {"csrf": actions.viewer("op").csrf or "", "action": action, "process": process}
        with pytest.raises(Refused) as info:
            actions.perform("op", GOOD, form, KNOWN)
        assert (code, True) == (info.value.code, needle in info.value.reason)
        assert [] == rpc.calls

    def test_a_failed_rpc_is_recorded_not_raised(self):
        """supervisord refusing the call leaves a 'failed' event, no exception on the worker."""
        actions, rpc, history = make_actions()
        rpc.fail["stop"] = SupervisorError("cannot reach supervisord")
        form = {"csrf": actions.viewer("op").csrf or "", "action": "stop", "process": "w:w"}
        actions.perform("op", GOOD, form, KNOWN)
        assert "stop by op failed" in history.events("w:w")[0].text

    def test_without_auth_nobody_operates(self):
        """With no web config users, even a listed name gets no token."""
        actions, _, _ = make_actions(auth=False)
        assert actions.viewer("op").csrf is None


class TestDoubleClick:
    def test_a_second_click_while_the_first_is_queued_is_refused_409(self):
        """Two quick POSTs of one restart: one restart (it went stop, start, stop, start);
        the second gets 409 saying it is under way; once done, a new click is taken."""
        queued: list[Any] = []
        actions, rpc, _ = make_actions(run=queued.append)
        viewer = actions.viewer("op")
        form = {"csrf": viewer.csrf or "", "action": "restart", "process": "w:w"}
        assert "restart of w:w requested" == actions.perform("op", GOOD, form, {"w:w"})
        with pytest.raises(Refused) as again:
            actions.perform("op", GOOD, form, {"w:w"})
        assert 409 == again.value.code
        assert "already under way" in again.value.reason
        stop = {**form, "action": "stop"}
        assert "stop of w:w requested" == actions.perform("op", GOOD, stop, {"w:w"})
        for fn in queued:
            fn()
        # one restart (a stop and a start) and the stop: the refused second click did nothing
        assert (2, 1) == (
            [m for m, _ in rpc.calls].count("stop"),
            [m for m, _ in rpc.calls].count("start"),
        )
        assert "restart of w:w requested" == actions.perform("op", GOOD, form, {"w:w"})


class TestRoutes:
    def test_pages_waiting_on_a_stalled_supervisord_are_capped_the_rest_skip_the_tail(self):
        """supervisord stalls: the first TAILS_AT_ONCE process pages wait on their tail (each
        holding a request slot); the next page comes back at once without it, so they
        cannot hold the slots /metrics needs."""
        from listeners.metrics.routes import TAILS_AT_ONCE

        gate, waiting = threading.Event(), threading.Semaphore(0)

        def stalled(name: str) -> str:
            waiting.release()
            gate.wait(30)
            return "late line"

        site = Site(state=running(), reader=ProcReader(), dashboard_url="http://x/", tail=stalled)
        held = [
            threading.Thread(target=handle_get, args=(site, "/process/w:w", None))
            for _ in range(TAILS_AT_ONCE)
        ]
        for t in held:
            t.start()
        for _ in held:
            assert waiting.acquire(timeout=30)
        try:
            answer = handle_get(site, "/process/w:w", None)
            assert answer is not None
            assert 200 == answer.code
            assert b"stderr tail skipped: other pages are waiting on supervisord" in answer.body
        finally:
            gate.set()
            for t in held:
                t.join(30)
        answer = handle_get(site, "/process/w:w", None)
        assert answer is not None
        assert b"late line" in answer.body

    def test_post_on_a_read_only_page_is_403(self):
        """No actions configured: POST /action is refused and says the page is read-only."""
        site = Site(state=ExporterState(), reader=ProcReader(), dashboard_url="http://x/")
        answer = handle_post(site, "/action", None, GOOD, b"action=stop&process=w:w")
        assert 403 == answer.code
        assert b"read-only" in answer.body

    def test_redirect_back_stays_on_this_server(self):
        """After an action the answer goes back to a local path, never another host."""
        actions, _, _ = make_actions()
        state = running()
        site = Site(state=state, reader=ProcReader(), dashboard_url="http://x/", actions=actions)
        token = actions.viewer("op").csrf
        for back, where in (("/process/w:w", "/process/w:w"), ("//evil.example/", "/")):
            body = f"csrf={token}&action=start&process=w:w&back={back}".encode()
            answer = handle_post(site, "/action", "op", GOOD, body)
            assert (303, ("Location", where)) == (answer.code, answer.headers[0])

    def test_basic_user_reads_the_name(self):
        """The user name comes from the Basic header; garbage gives None."""
        assert "op" == basic_user("Basic " + base64.b64encode(b"op:pw").decode())
        assert basic_user("Basic !!!") is None
        assert basic_user(None) is None


class TestWebConfigOperators:
    def test_operators_must_be_basic_auth_users(self, tmp_path: Path):
        """operators: names a user without a hash: a clear error naming it."""
        f = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        f.write_text(f"basic_auth_users:\n  op: '{hashed}'\noperators: [op, ghost]\n")
        with pytest.raises(ValueError, match=r"\['ghost'\] are not in basic_auth_users"):
            load_web_config(f)
        f.write_text(f"basic_auth_users:\n  op: '{hashed}'\noperators: op\n")
        with pytest.raises(ValueError, match="must be a list"):
            load_web_config(f)
        f.write_text(f"basic_auth_users:\n  op: '{hashed}'\noperators: [op]\n")
        assert frozenset({"op"}) == load_web_config(f).operators


@pytest.fixture
def server() -> Iterator[int]:
    state = running()
    srv = make_server(
        "127.0.0.1",
        0,
        state=state,
        reader=ProcReader(),
        web_config=load_web_config(None),
        dashboard_url="http://x/",
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body or None, headers={"Origin": f"http://127.0.0.1:{port}"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.headers, data


class TestHTTP:
    def test_page_json_static_and_csp(self, server):
        """/, /api/status and the script are served; the CSP allows same-origin script only."""
        status, headers, body = request(server, "GET", "/")
        assert 200 == status
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert b"w:w" in body
        status, headers, body = request(server, "GET", "/api/status")
        assert (200, "application/json") == (status, headers["Content-Type"])
        assert "w" == json.loads(body)["processes"][0]["name"]
        status, headers, body = request(server, "GET", "/static/status.js")
        assert (200, True) == (status, b"textContent" in body)

    def test_post_without_web_config_is_refused(self, server):
        """The page of an exporter without web config is read-only: POST gets 403."""
        status, _, body = request(server, "POST", "/action", b"action=stop&process=w:w")
        assert 403 == status
        assert b"read-only" in body

    def test_big_or_lengthless_posts_are_refused(self, server):
        """A form over 4 KB gets 413; POST elsewhere 405."""
        assert 413 == request(server, "POST", "/action", b"x" * 5000)[0]
        assert 405 == request(server, "POST", "/metrics", b"a=1")[0]


def test_bcrypt_is_available_for_web_configs():
    """The web config's hashes are bcrypt (the e2e test writes real ones)."""
    assert bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)))


class FakeTasks:
    def __init__(self) -> None:
        self.state = {"mailer": True, "reports": False}
        self.broken: dict[str, str] = {}
        self.calls: list[tuple[str, bool]] = []

    def names(self) -> list[tuple[str, bool, str]]:
        return [(n, on, self.broken.get(n, "")) for n, on in sorted(self.state.items())]

    def toggle(self, name: str, enable: bool) -> tuple[bool, str]:
        self.calls.append((name, enable))
        self.state[name] = enable
        return True, f"{name}: moved"


class TestTaskActions:
    def test_an_operator_disables_a_task_and_it_is_announced(self):
        """disable runs the tasks core for that task and publishes the action on the bus."""
        tasks = FakeTasks()
        actions, rpc, _ = make_actions(tasks=tasks)
        form = {"csrf": actions.viewer("op").csrf or "", "action": "disable", "task": "mailer"}
        assert "disable of task mailer requested" == actions.perform("op", GOOD, form, KNOWN)
        assert [("mailer", False)] == tasks.calls
        sent = bus.decode(rpc.calls[-1][1][1])
        assert isinstance(sent, bus.ActionPerformed)
        assert ("disable", "mailer", "op") == (sent.action, sent.name, sent.user)

    @pytest.mark.parametrize(
        ("tasks", "task", "code"), [(None, "mailer", 400), (FakeTasks(), "ghost", 404)]
    )
    def test_unknown_tasks_or_no_tasks_conf_are_refused(self, tasks, task, code):
        """No --tasks-conf: 400; a task that is not there: 404; nothing runs."""
        actions, rpc, _ = make_actions(tasks=tasks)
        form = {"csrf": actions.viewer("op").csrf or "", "action": "enable", "task": task}
        with pytest.raises(Refused) as info:
            actions.perform("op", GOOD, form, KNOWN)
        assert code == info.value.code
        assert [] == rpc.calls

    def test_a_viewer_cannot_toggle_tasks(self):
        """A viewer's enable is refused before anything moves."""
        tasks = FakeTasks()
        actions, _, _ = make_actions(tasks=tasks)
        form = {"csrf": Csrf(b"k" * 32).token("viewer"), "action": "enable", "task": "reports"}
        with pytest.raises(Refused, match="viewer"):
            actions.perform("viewer", GOOD, form, KNOWN)
        assert [] == tasks.calls

    def test_tasks_are_listed_with_forms_for_operators_only(self):
        """The page lists tasks; the operator gets enable/disable, a viewer only the states."""
        tasks = FakeTasks().names()
        op = render_status_page(MIXED, USAGES, "http://x/", NOW, Viewer("op", "t"), tasks=tasks)
        assert '<button name=action value="disable">disable</button>' in op
        assert '<button name=action value="enable">enable</button>' in op
        viewer = render_status_page(MIXED, USAGES, "http://x/", NOW, Viewer("v"), tasks=tasks)
        assert 'data-task="reports"' in viewer
        assert "<form" not in viewer

    def test_a_broken_task_file_says_so_and_what_is_wrong(self):
        """A task whose file cannot be read is marked BROKEN with its problem, escaped."""
        fake = FakeTasks()
        fake.broken["reports"] = "tasks/reports.conf:3: cannot parse line '<oops'"
        page = render_status_page(
            MIXED, USAGES, "http://x/", NOW, Viewer("op", "t"), tasks=fake.names()
        )
        row = page[page.index('data-task="reports"') :].split("</tr>", 1)[0]
        assert "<td class=t-broken>BROKEN: tasks/reports.conf:3: cannot parse line" in row
        assert "&#x27;&lt;oops&#x27;" in row
        assert "BROKEN" not in page[page.index('data-task="mailer"') :].split("</tr>", 1)[0]


class TestSourcesFromOtherListeners:
    def test_a_sink_that_holds_alerts_after_failures_is_named_on_the_page_and_in_the_api(self):
        """Only sinks with alerts waiting AND failed attempts are named, escaped in HTML; the
        API carries every sink's figures, null before crashmail has said anything."""
        from listeners.metrics.page import delivery_warning

        base = Snapshot(True, "4.3", "x", (), 0, 0, 0)
        assert ("", None) == (
            delivery_warning(base.alert_sinks),
            api.status_document(base, {}, 0.0)["alert_sinks"],
        )
        told = base._replace(alert_sinks=(("file", 2, 0), ("smtp:<b>:25", 3, 1), ("hook", 0, 9)))
        text = delivery_warning(told.alert_sinks)
        assert text == (
            "crashmail cannot deliver every alert (smtp:<b>:25: 3 waiting after 1 failed"
            " attempt); crashmail's log says why (outbox.delivery_failed), and they are sent"
            " once the sink takes them"
        )
        page = render_status_page(told, {}, "http://127.0.0.1:8080/", now=0.0)
        assert "<p id=delivery class=warn>crashmail cannot deliver" in page
        assert "smtp:&lt;b&gt;:25" in page
        assert {"sink": "smtp:<b>:25", "pending": 3, "failures": 1} in api.status_document(
            told, {}, 0.0
        )["alert_sinks"]
        quiet = render_status_page(base, {}, "http://127.0.0.1:8080/", now=0.0)
        assert "<p id=delivery class=warn hidden></p>" in quiet

    def test_the_delivery_warning_names_ten_sinks_at_most(self):
        """5,000 failing sinks made a 2.4 MB page: ten are named, then how many more."""
        from listeners.metrics.page import delivery_warning

        sinks = tuple((f"hook{i:02}", 1, 1) for i in range(12))
        text = delivery_warning(sinks)
        assert ("hook09" in text, "hook10" in text) == (True, False)
        assert "; and 2 more sinks)" in text

    def test_undelivered_alerts_come_from_crashmails_delivery_health(self):
        """The header counts crashmail's pending deliveries over all sinks; unknown is None."""
        from listeners.metrics.api import rows, summary

        base = Snapshot(True, "4.3", "x", (), 0, 0, 0)
        assert summary(base, rows(base, {}))["alerts_undelivered"] is None
        told = base._replace(alert_sinks=(("file", 2, 0), ("smtp", 3, 7)))
        assert 5 == summary(told, rows(told, {}))["alerts_undelivered"]


class TestPageTasksOnRealFiles:
    def test_a_file_missing_its_bracket_is_listed_broken_with_its_line(self, tmp_path):
        """The exporter's task source reads tasks/ like supervisor-tasks list does."""
        from listeners.exporter import PageTasks
        from tests.test_tasks import MAIN, prog

        for sub in ("tasks", "tasks_disabled", "run"):
            (tmp_path / sub).mkdir()
        (tmp_path / "supervisord.conf").write_text(MAIN.replace(" listeners.d/*.conf", ""))
        (tmp_path / "tasks" / "mailer.conf").write_text(prog("mailer"))
        (tmp_path / "tasks" / "broken.conf").write_text("[program:broken\ncommand=/bin/true\n")
        (tmp_path / "tasks_disabled" / "reports.conf").write_text(prog("reports"))
        rows = {
            name: (on, problem)
            for name, on, problem in PageTasks(
                tmp_path / "supervisord.conf",
                FakeSupervisor(),
            ).names()
        }
        assert (rows["mailer"], rows["reports"]) == ((True, ""), (False, ""))
        assert (rows["broken"][0], "broken.conf:1" in rows["broken"][1]) == (True, True)
