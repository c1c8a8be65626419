"""supervisor-health and supervisor-httpok against a real supervisord and real workers.

Run as a script, this file is the worker: ``http PORT FLAG`` serves 200 "ok" until FLAG
exists, then 500 (a new instance removes FLAG: a restart fixes it); ``beat FLAG`` writes a
heartbeat in supervisord's capture mode every 0.3 s and stops beating, alive, while FLAG
exists; ``flaky COUNT`` crashes after 2.5 s, except its fourth run, which lasts 7 s.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = str(Path(__file__).parents[2])
HERE = str(Path(__file__))


def _serve(port: int, flag: str) -> None:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            bad = os.path.exists(flag)
            self.send_response(500 if bad else 200)
            self.end_headers()
            self.wfile.write(b"broken" if bad else b"ok")

        def log_message(self, *_args: object) -> None:
            pass

    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()


def _beat(flag: str) -> None:
    while True:
        if not os.path.exists(flag):
            sys.stdout.write("<!--XSUPERVISOR:BEGIN-->beat<!--XSUPERVISOR:END-->\n")
            sys.stdout.flush()
        time.sleep(0.3)


def _flaky(count_file: str) -> None:
    # a run is counted when it ends by itself: one that health stops (a respawn it holds) is not
    path = Path(count_file)
    count = int(path.read_text()) + 1 if path.exists() else 1
    time.sleep(7.0 if count == 4 else 2.5)
    path.write_text(str(count))
    sys.exit(3)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode in ("http", "beat") and os.path.exists(sys.argv[-1]):
        os.unlink(sys.argv[-1])  # a fresh instance is a fixed one
    if mode in ("http", "stuck-http"):  # stuck-http: a restart does not clear the flag
        _serve(int(sys.argv[2]), sys.argv[3])
    elif mode == "slow-http":  # listens only after a slow start, then healthy
        time.sleep(float(sys.argv[3]))
        _serve(int(sys.argv[2]), "/nonexistent/flag")
    elif mode == "beat":
        _beat(sys.argv[2])
    else:
        _flaky(sys.argv[2])
    sys.exit(0)

from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port, wait_for  # noqa: E402


def listener(name: str, command: str, events: str, log: Path, env: str = "") -> str:
    return f"""
        [eventlistener:{name}]
        command={command}
        events={events}
        buffer_size=1024
        stderr_logfile={log}
        stderr_logfile_maxbytes=0
        environment=PYTHONPATH="{ROOT}"{env}
        """


def program(name: str, args: str, extra: str = "") -> str:
    return f"""
        [program:{name}]
        command={PYTHON} {args}
        startsecs=1
        autorestart=true
        stopwaitsecs=5
        {extra}
        """


def bus_conf(out: Path) -> str:
    return listener(
        "busrec", f"{PYTHON} {WORKER} bus-record --out {out}", "REMOTE_COMMUNICATION", out
    ).replace(f"stderr_logfile={out}", f"stderr_logfile={out}.err")


def health_messages(path: Path, kind: str) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        type_, _, data = line.partition(" ")
        if type_ == "listeners.health" and (body := json.loads(data))["kind"] == kind:
            out.append(body)
    return out


def pid(sup: Supervisord, name: str) -> int:
    return int(sup.info(name)["pid"])


class TestProbes:
    def test_a_worker_answering_500_is_restarted_and_a_healthy_one_never(
        self, supervisord, tmp_path
    ):
        """An HTTP worker that starts answering 500 is restarted; its healthy sibling is not."""
        bad_port, good_port = free_port(), free_port()
        bad_flag, good_flag = tmp_path / "bad.flag", tmp_path / "good.flag"
        conf = tmp_path / "health.conf"
        conf.write_text(
            f"[health]\ngrace = 30s\n\n[program:bad]\nhttp = http://127.0.0.1:{bad_port}/\n"
            "period = 500ms\ntimeout = 2s\nfailures = 2\n\n"
            f"[program:good]\nhttp = http://127.0.0.1:{good_port}/\nperiod = 500ms\n"
        )
        out = tmp_path / "bus.txt"
        sup = supervisord(
            program("bad", f"{HERE} http {bad_port} {bad_flag}")
            + program("good", f"{HERE} http {good_port} {good_flag}")
            + listener(
                "health",
                f"{PYTHON} -m listeners.health --config {conf}",
                "PROCESS_STATE",
                tmp_path / "health.log",
            )
            + bus_conf(out)
        )
        sup.wait_all("RUNNING", ["bad:bad", "good:good"])
        good_pid, bad_pid = pid(sup, "good:good"), pid(sup, "bad:bad")
        time.sleep(2)  # both pass probes first: their startup phase is over
        bad_flag.touch()
        wait_for(lambda: pid(sup, "bad:bad") not in (0, bad_pid), 30, what="bad restarted")
        hung = wait_for(lambda: health_messages(out, "process_hung"), 10, what="hung message")
        assert ("bad", "probe", "restart") == (
            hung[0]["name"],
            hung[0]["reason"],
            hung[0]["action"],
        )
        time.sleep(3)
        assert good_pid == pid(sup, "good:good")
        assert [] == [m for m in health_messages(out, "process_hung") if m["name"] == "good"]


class TestHeartbeat:
    def test_a_worker_that_stops_beating_is_restarted_and_announced_hung(
        self, supervisord, tmp_path
    ):
        """A live worker without heartbeats (capture mode) is restarted and reported hung:
        on the bus, and by a real crashmail as one `hung` alert in its file sink."""
        flag = tmp_path / "stuck.flag"
        out = tmp_path / "bus.txt"
        alerts = tmp_path / "alerts.jsonl"
        sup = supervisord(
            listener(
                "crashmail",
                f"{PYTHON} -m listeners.crashmail --sink file:{alerts}"
                f" --outbox {tmp_path}/outbox.sqlite --coalesce 1s",
                "PROCESS_STATE,REMOTE_COMMUNICATION",
                tmp_path / "crashmail.log",
            )
            + program(
                "queue",
                f"{HERE} beat {flag}",
                "stdout_capture_maxbytes=1MB\n        stdout_logfile=NONE",
            )
            + listener(
                "health",
                f"{PYTHON} -m listeners.health -p queue --heartbeat 3s --grace 0",
                "PROCESS_STATE,PROCESS_COMMUNICATION",
                tmp_path / "health.log",
            )
            + bus_conf(out)
        )
        sup.wait_state("queue:queue", "RUNNING")
        first = pid(sup, "queue:queue")
        time.sleep(4)  # beating: left alone past the heartbeat limit
        assert first == pid(sup, "queue:queue")
        flag.touch()
        wait_for(lambda: pid(sup, "queue:queue") not in (0, first), 30, what="queue restarted")
        hung = wait_for(lambda: health_messages(out, "process_hung"), 10, what="hung message")
        assert ["heartbeat"] == [m["reason"] for m in hung]
        assert "no heartbeat" in str(hung[0]["detail"])
        (alert,) = wait_for(
            lambda: [
                a
                for a in map(json.loads, alerts.read_text().splitlines() if alerts.exists() else [])
                if a["kind"] == "hung"
            ],
            30,
            what="crashmail's hung alert",
        )
        assert ("queue", "queue", first) == (alert["group"], alert["name"], alert["details"]["pid"])
        assert (
            f"queue:queue (pid {first}) stopped sending heartbeats: no heartbeat" in alert["text"]
        )
        assert "supervisor-health restarted it." in alert["text"]


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")


def _log_times(text: str) -> list[tuple[float, str]]:
    rows = []
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m:
            stamp = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            rows.append((stamp, m[2]))
    return rows


def start_gaps(text: str, name: str) -> list[float]:
    """Seconds from each crash to the start that reached RUNNING, from supervisord's log."""
    gaps, crashed, spawned = [], None, None
    for stamp, line in _log_times(text):
        if line.startswith(f"exited: {name} ") and "not expected" in line:
            crashed = stamp
        elif line.startswith(f"spawned: '{name}'"):
            spawned = stamp
        elif line.startswith(f"success: {name} entered RUNNING") and crashed and spawned:
            gaps.append(spawned - crashed)
            crashed = None
    return gaps


class TestBackoff:
    def test_delays_grow_and_reset_after_a_stable_run(self, supervisord, tmp_path):
        """supervisord's log shows the respawn delays double, then fall back after a stable run."""
        count = tmp_path / "count"
        sup = supervisord(
            program("flaky", f"{HERE} flaky {count}")
            + listener(
                "health",
                f"{PYTHON} -m listeners.health -p flaky --backoff --backoff-base 1s"
                f" --backoff-cap 8s --backoff-reset 5s --state-dir {tmp_path}/state",
                "PROCESS_STATE",
                tmp_path / "health.log",
            )
        )
        gaps = wait_for(
            lambda: (g := start_gaps(sup.log_text(), "flaky")) and len(g) >= 4 and g,
            90,
            what="four held restarts",
        )
        # crashes 1-3 wait 1, 2, 4 s; the fourth run lasted 7 s > reset, so 1 s again
        # 1 s, 2 s, 4 s of delay: the third gap is longer than both before it (a loaded host can
        # stretch one start by a second, so neighbours are not compared)
        assert max(gaps[0], gaps[1]) < gaps[2]
        assert gaps[3] < gaps[2]
        assert "next start in 4 s" in (tmp_path / "health.log").read_text()
        assert (tmp_path / "state").is_dir()

    def test_with_startsecs_0_a_held_worker_is_still_started_after_each_hold(
        self, supervisord, tmp_path
    ):
        """startsecs=0: supervisord reports the respawn RUNNING before health's stop lands.
        The worker must not stay STOPPED: it is started again after every hold."""
        log = tmp_path / "health.log"
        quick = program("quick", f"{WORKER} crash --after 1.5 --code 3").replace(
            "startsecs=1", "startsecs=0"
        )
        sup = supervisord(
            quick
            + listener(
                "health",
                f"{PYTHON} -m listeners.health -p quick --backoff --backoff-base 1s"
                f" --backoff-cap 2s --backoff-reset 60s --state-dir {tmp_path}/state",
                "PROCESS_STATE",
                log,
            )
        )

        def holds() -> int:
            return log.read_text().count('"health.backoff"') if log.exists() else 0

        try:
            wait_for(lambda: holds() >= 3, 60, what="three holds: it came back after each")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sup.log_text()[-2000:]}") from None


class TestRevive:
    def test_health_killed_mid_hold_goes_on_with_the_same_schedule(self, supervisord, tmp_path):
        """SIGKILL supervisor-health while it holds a crash-looping worker: supervisord starts
        it again, the new one reads the state file, starts the held worker when its delay is
        over and counts on (the next crash waits 8 s, not the base 2 s again)."""
        log = tmp_path / "health.log"
        sup = supervisord(
            program("loop", f"{WORKER} crash --after 1.2 --code 3")
            + listener(
                "health",
                f"{PYTHON} -m listeners.health -p loop --backoff --backoff-base 2s"
                f" --backoff-cap 60s --backoff-reset 60s --state-dir {tmp_path}/state",
                "PROCESS_STATE",
                log,
            )
        )

        def holds() -> list[dict[str, object]]:
            text = log.read_text() if log.exists() else ""
            return [json.loads(ln) for ln in text.splitlines() if '"health.backoff"' in ln]

        wait_for(lambda: [h["delay"] for h in holds()] == [2.0, 4.0], 60, what="the 4 s hold")
        killed = pid(sup, "health:health")
        os.kill(killed, signal.SIGKILL)
        wait_for(
            lambda: (
                pid(sup, "health:health") not in (0, killed)
                and sup.state("health:health") == "RUNNING"
            ),
            30,
            what="health started again",
        )
        delays = wait_for(
            lambda: (d := [h["delay"] for h in holds()]) and len(d) >= 3 and d,
            60,
            what="the hold after the restart",
        )
        assert [2.0, 4.0, 8.0] == delays[:3]
        assert 3 == holds()[2]["failures"]
        assert list((tmp_path / "state").iterdir())

    def test_a_fatal_program_is_started_again(self, supervisord, tmp_path):
        """A program that went FATAL is started again after the backoff and can recover."""
        flag = tmp_path / "fixed"
        sup = supervisord(
            program(
                "dead",
                f"{WORKER} crash-until --flag {flag} --after 0",
                "startretries=0",
            )
            + listener(
                "health",
                f"{PYTHON} -m listeners.health -p dead --revive-fatal --backoff-base 1s"
                f" --backoff-cap 2s --state-dir {tmp_path}/state",
                "PROCESS_STATE",
                tmp_path / "health.log",
            )
        )
        wait_for(lambda: sup.log_text().count("gave up: dead") >= 2, 30, what="revived once")
        flag.touch()
        sup.wait_state("dead:dead", "RUNNING", 30)


class TestHttpok:
    def test_superlance_flags_run_unchanged(self, supervisord, tmp_path):
        """superlance httpok's command line works as is; the 500 worker is restarted, mail sent."""
        port = free_port()
        flag = tmp_path / "flag"
        mail = tmp_path / "mail.txt"
        sup = supervisord(
            program("web", f"{HERE} http {port} {flag}")
            + listener(
                "httpok",
                f"{PYTHON} -m listeners.httpok -p web -t 2 -c 200 -b ok -m ops@example.com"
                f' -s "tee -a {mail}" -n front -E http://127.0.0.1:{port}/',
                "TICK_5",
                tmp_path / "httpok.log",
            )
        )
        sup.wait_state("web:web", "RUNNING")
        first = pid(sup, "web:web")
        time.sleep(6)  # one TICK_5 passes while healthy
        assert first == pid(sup, "web:web")
        flag.touch()
        wait_for(lambda: pid(sup, "web:web") not in (0, first), 30, what="web restarted")
        text = wait_for(lambda: mail.exists() and mail.read_text(), 10, what="mail")
        assert "To: ops@example.com" in text
        assert "httpok [front]" in text

    def test_a_worker_slow_to_start_answering_is_not_restarted(self, supervisord, tmp_path):
        """superlance httpok restarted a worker still starting up: here one that listens only
        after 8 s fails its first probes (refused) and is left alone within --grace (30 s)."""
        port = free_port()
        log = tmp_path / "httpok.log"
        sup = supervisord(
            program("web", f"{HERE} slow-http {port} 8")
            + listener(
                "httpok",
                f"{PYTHON} -m listeners.httpok -p web -t 2 -c 200 http://127.0.0.1:{port}/",
                "TICK_5",
                log,
            )
        )
        sup.wait_state("web:web", "RUNNING")
        first = pid(sup, "web:web")
        wait_for(
            lambda: "health.unhealthy" in log.read_text() or "probe_failed" in log.read_text(),
            30,
            what="a failed probe while it starts",
        )
        time.sleep(12)  # it answers from 8 s on; two more ticks pass
        assert first == pid(sup, "web:web")
        assert "restart.stop_sent" not in log.read_text()

    def test_on_tick_alone_a_replacement_that_still_fails_is_restarted_again(
        self, supervisord, tmp_path
    ):
        """superlance's conf (events=TICK only, no state events): a worker that stays broken
        across restarts is restarted on every spell, each new run past its --grace; the first
        restart was the only one before."""
        port = free_port()
        flag = tmp_path / "broken"
        flag.touch()
        sup = supervisord(
            program("web", f"{HERE} stuck-http {port} {flag}")
            + listener(
                "httpok",
                f"{PYTHON} -m listeners.httpok -p web -t 2 -c 200 --grace 3s"
                f" http://127.0.0.1:{port}/",
                "TICK_5",
                tmp_path / "httpok.log",
            )
        )
        sup.wait_state("web:web", "RUNNING")
        seen = {pid(sup, "web:web")}

        def three_runs() -> bool:
            p = pid(sup, "web:web")
            if p:
                seen.add(p)
            return len(seen) >= 3

        wait_for(three_runs, 90, 0.3, what="two restarts of the still-broken worker")
        flag.unlink()

    @staticmethod
    def _fail_with_gcore(supervisord, tmp_path, gcore: str) -> tuple[int, Path, Path]:
        """An httpok with ``-g GCORE -d cores`` whose web worker starts answering 500; returns
        the worker's first pid, the core dir and httpok's log once the worker was restarted."""
        port = free_port()
        flag, cores, log = tmp_path / "flag", tmp_path / "cores", tmp_path / "httpok.log"
        cores.mkdir()
        sup = supervisord(
            program("web", f"{HERE} http {port} {flag}")
            + listener(
                "httpok",
                f"{PYTHON} -m listeners.httpok -p web -t 2 -c 200 -g '{gcore}' -d {cores}"
                f" --grace 0 http://127.0.0.1:{port}/",
                "TICK_5",
                log,
            )
        )
        sup.wait_state("web:web", "RUNNING")
        first = pid(sup, "web:web")
        flag.touch()  # --grace 0: judged at the next TICK_5
        try:
            # the restart waits for the dump, and gcore may take up to its 120 s timeout
            wait_for(lambda: pid(sup, "web:web") not in (0, first), 150, what="web restarted")
        except AssertionError as exc:
            said = log.read_text() if log.exists() else "(no httpok log)"
            raise AssertionError(f"{exc}\nhttpok's log:\n{said[-4000:]}") from None
        return first, cores, log

    @pytest.mark.skipif(not Path("/usr/bin/gcore").exists(), reason="needs gdb's gcore")
    def test_gcore_and_coredir_dump_the_hung_worker_before_the_restart(self, supervisord, tmp_path):
        """httpok's -g/-d: the worker answering 500 is dumped with the real gcore into the
        core directory (named after the process and its old pid), then restarted."""
        first, cores, log = self._fail_with_gcore(supervisord, tmp_path, "/usr/bin/gcore -o")
        (core,) = wait_for(lambda: list(cores.glob(f"web_web.*.{first}")), 30, what="the core")
        with core.open("rb") as f:
            head = f.read(18)
        assert head[:4] == b"\x7fELF"
        assert head[16] == 4  # e_type ET_CORE: a core file, not an executable
        written = wait_for(
            lambda: [
                json.loads(ln) for ln in log.read_text().splitlines() if "health.core_written" in ln
            ],
            10,
            what="health.core_written",
        )
        assert (written[0]["pid"], written[0]["path"]) == (first, str(core))

    def test_a_gcore_that_fails_is_logged_and_the_restart_goes_on(self, supervisord, tmp_path):
        """-g naming a program that exits 1: health.gcore_failed says so; web is restarted."""
        _, cores, log = self._fail_with_gcore(supervisord, tmp_path, "/bin/false")
        wait_for(lambda: "health.gcore_failed" in log.read_text(), 10, what="gcore_failed")
        assert "/bin/false exited 1" in log.read_text()
        assert [] == list(cores.iterdir())


class TestExample:
    def test_the_example_holds_its_crash_looping_worker(self):
        """In the shipped example, health holds webhook_sender between restarts and says so."""
        from tests.e2e.example_stack import ExampleStack

        stack = ExampleStack().start()
        try:
            log = stack.run_dir / "health.log"
            text = wait_for(
                lambda: log.exists() and "next start in 4 s" in log.read_text() and log.read_text(),
                90,
                what="a second, longer hold of webhook_sender",
            )
            assert "next start in 2 s" in text
            assert "RUNNING" == stack.client.process_info("health:health")["statename"]
        finally:
            stack.cleanup()
