"""The example stack starts from its conf as shipped: Python and PHP workers, the listeners."""

from __future__ import annotations

import base64
import configparser
import datetime
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import psutil
import pytest

from tests.e2e.example_stack import DEFAULT_ADDRESSES, PASSWORD, REPO, STACK, ExampleStack
from tests.e2e.support import BAD_LOG_LINES, wait_for


def programs_in(directory: str) -> dict[str, int]:
    """program name -> numprocs of every conf in tasks/ or tasks_disabled/."""
    found = {}
    for path in sorted((STACK / directory).glob("*.conf")):
        parser = configparser.RawConfigParser()
        parser.read(path)
        for section in parser.sections():
            if section.startswith("program:"):
                found[section.removeprefix("program:")] = parser.getint(
                    section, "numprocs", fallback=1
                )
    return found


@pytest.fixture(scope="module")
def stack() -> Iterator[ExampleStack]:
    s = ExampleStack().start()
    yield s
    log = s.log_text()
    s.cleanup()
    bad = [ln for ln in log.splitlines() if any(b in ln for b in BAD_LOG_LINES)]
    assert [] == bad


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)  # noqa: S310 - fixed loopback URL
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class TestExampleStack:
    def test_every_task_in_tasks_reaches_running(self, stack):
        """Each program in tasks/ runs all its numprocs processes."""
        expected = programs_in("tasks")
        assert len(expected) >= 2
        assert any(n > 1 for n in expected.values())

        def all_seen_running() -> bool:
            infos = stack.client.all_process_info()
            running = [i for i in infos if i["statename"] == "RUNNING" or i["start"] > 0]
            counts: dict[str, int] = {}
            for i in running:
                counts[i["group"]] = counts.get(i["group"], 0) + 1
            return all(counts.get(p, 0) == n for p, n in expected.items())

        wait_for(all_seen_running, 30, what="every task RUNNING")
        infos = stack.client.all_process_info()
        for program, numprocs in expected.items():
            assert numprocs == sum(1 for i in infos if i["group"] == program)

    def test_nothing_from_tasks_disabled_exists(self, stack):
        """Programs kept in tasks_disabled/ are not loaded at all."""
        disabled = programs_in("tasks_disabled")
        assert disabled
        groups = {i["group"] for i in stack.client.all_process_info()}
        assert set() == groups & set(disabled)

    def test_dashboard_asks_for_the_password(self, stack):
        """8080 answers 401 without credentials and 200 with them, on loopback."""
        assert 401 == get(stack.dashboard_url)
        assert 401 == get(stack.dashboard_url, ("admin", "wrong"))
        assert 200 == get(stack.dashboard_url, ("admin", PASSWORD))

    def test_dashboard_and_exporter_default_to_loopback(self):
        """Outside the image, the dashboard and the exporter listen on 127.0.0.1 only."""
        parser = configparser.RawConfigParser()
        parser.read(STACK / "supervisord.conf")
        # the dashboard's section is written at start by run.py (tests/test_example_run.py)
        assert not parser.has_section("inet_http_server")
        assert "run/dashboard.conf" in parser.get("include", "files").split()
        assert {
            "SUPERVISOR_DASHBOARD_ADDRESS": "127.0.0.1:8080",
            "EXPORTER_ADDRESS": "127.0.0.1:9876",
            "SMTP_ADDRESS": "127.0.0.1:2525",
        } == DEFAULT_ADDRESSES


class TestExampleStackSecrets:
    def test_no_process_environment_holds_the_dashboard_password(self, stack):
        """Under example/run.py no /proc/*/environ on the machine holds the dashboard password."""
        assert 200 == get(stack.dashboard_url, ("admin", PASSWORD))
        assert stack.proc is not None
        tree = [stack.proc.pid, *(p.pid for p in psutil.Process(stack.proc.pid).children(True))]
        assert len(tree) > 10
        holders = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if PASSWORD.encode() in environ.read_bytes():
                    holders.append(environ.parent.name)
            except OSError:
                continue  # gone, or another user's (the stack's own are ours)
        assert [] == holders


def alerts(stack: ExampleStack) -> list[dict[str, object]]:
    path = stack.run_dir / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


LISTENERS = ("memmon", "crashmail", "exporter")


class TestExampleStackListeners:
    def test_leaking_worker_is_restarted_by_memmon_at_16mb(self, stack):
        """image_resizer passes 16 MiB, memmon restarts it, crashmail reports it, it runs again."""

        def restart_alert() -> dict[str, object] | None:
            found = [
                a
                for a in alerts(stack)
                if a["kind"] == "memory_restart" and a["group"] == "image_resizer"
            ]
            return found[0] if found else None

        alert = wait_for(restart_alert, 60, what="memory_restart alert for image_resizer")
        details = alert["details"]
        assert isinstance(details, dict)
        assert 16 * 1024 * 1024 == details["limit_bytes"]
        # the worker leaks 1 MiB/s and memmon checks every second, so it is caught just past the
        # ceiling; the first catch may come a few MiB later while the whole stack is starting
        assert 16 * 1024 * 1024 < details["measured_bytes"] < 24 * 1024 * 1024
        info = wait_for(
            lambda: (
                (i := stack.client.process_info("image_resizer:image_resizer_0"))["statename"]
                == "RUNNING"
                and i["pid"] != details["pid"]
                and i
            ),
            30,
            what="image_resizer back RUNNING",
        )
        assert info["pid"] != details["pid"]

    def test_the_readme_timeline_of_the_leaking_worker_is_what_the_example_does(self, stack):
        """README: the leaking workers are restarted "just past 16 MiB PSS (A to B MiB at every
        restart), the first time about F s after they start (memmon's `--grace Gs` ...)", and
        "after five restarts, about T s after they start," memmon gives up on them.

        The figures are read from README.md and measured on both workers, so the README cannot
        drift from the example by more than a run's normal variation. Measured (idle and loaded
        2-core host): first restart 10-11 s after the start, 16.0-17.0 MiB, given up 59-65 s
        after the start. Allowed: 30 % for the first restart (memmon checks once a second),
        20 % for giving up, one missed check (1 MiB at 1 MiB a second) above the MiB range.
        """
        readme = " ".join((REPO / "README.md").read_text().split())
        mib = re.search(
            r"just past 16 MiB PSS \((\d+\.\d) to (\d+\.\d) MiB at every restart\)", readme
        )
        first = re.search(
            r"the first time about (\d+) s after they start \(memmon's `--grace (\d+)s`", readme
        )
        about = re.search(r"after (\w+) restarts, about (\d+) s after they start", readme)
        said = "README no longer states the leaking workers' timeline"
        assert mib, said
        assert first, said
        assert about, said
        low_said, high_said = float(mib[1]), float(mib[2])
        first_said, grace_said = int(first[1]), int(first[2])
        restarts_said = {"four": 4, "five": 5, "six": 6}[about[1]]
        seconds_said = int(about[2])
        memmon_conf = (STACK / "listeners.d" / "memmon.conf").read_text()
        assert f"--grace {grace_said}s " in memmon_conf
        assert f"--max-restarts {restarts_said}/" in memmon_conf
        assert 16.0 <= low_said <= high_said

        def decisions(process: str) -> list[dict[str, object]]:
            path = stack.run_dir / "memmon.log"
            lines = path.read_text().splitlines() if path.exists() else []
            return [
                d
                for d in (json.loads(ln) for ln in lines if ln.startswith("{"))
                if d.get("event") == "memmon.decision" and d.get("process") == process
            ]

        def gave_up(process: str) -> list[dict[str, object]]:
            found = decisions(process)
            return found if any(d["action"] == "restarts_exhausted" for d in found) else []

        def local(iso: object) -> datetime.datetime:
            """memmon logs UTC ISO times, supervisord local ones: compare as local wall clocks."""
            utc = datetime.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
            return utc.astimezone().replace(tzinfo=None)

        seen: list[float] = []
        for worker in ("image_resizer", "feed_importer"):
            process = f"{worker}:{worker}_0"
            found = wait_for(
                lambda p=process: gave_up(p),
                2 * seconds_said + 30,
                what=f"memmon giving up on {worker}",
            )
            restarts = [d for d in found if d["action"] == "restart"]
            end = next(d for d in found if d["action"] == "restarts_exhausted")
            spawned = next(
                datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                for line in stack.log_text().splitlines()
                if f"spawned: '{worker}_0'" in line
            )
            first_s = (local(restarts[0]["timestamp"]) - spawned).total_seconds()
            took_s = (local(end["timestamp"]) - spawned).total_seconds()
            at = [round(int(d["measured"]) / 1048576, 1) for d in restarts]  # type: ignore[call-overload]
            print(
                f"{worker}: README says the first restart about {first_said} s after the start,"
                f" {low_said} to {high_said} MiB, {restarts_said} restarts, given up after about"
                f" {seconds_said} s; measured {first_s:.1f} s, {at} MiB, {len(restarts)}"
                f" restarts, {took_s:.1f} s"
            )
            assert restarts_said == len(restarts)
            assert all(low_said - 0.1 <= m <= high_said + 1.0 for m in at), at
            assert grace_said <= first_s, first_s
            assert first_said * 0.7 <= first_s <= first_said * 1.3, first_s
            assert seconds_said * 0.8 <= took_s <= seconds_said * 1.2, took_s
            seen += at
        # and the range said is what is seen, not merely wide enough
        assert max(seen) >= high_said - 1.0, seen

    def test_crash_looping_worker_is_reported_once_as_a_loop(self, stack):
        """webhook_sender's crashes give one crash_loop alert and nothing else: its first crash
        waits out crashmail's --group-wait and the loop, formed meanwhile, takes its place."""
        conf = (STACK / "listeners.d" / "crashmail.conf").read_text()
        group_wait = re.search(r"--group-wait (\d+)s ", conf)
        assert group_wait, "the example's crashmail no longer has a --group-wait"
        wait_s = int(group_wait[1])
        readme = " ".join((REPO / "README.md").read_text().split())
        assert f"holds every crash alert {wait_s} s" in readme

        def of_worker() -> list[dict[str, object]]:
            return [a for a in alerts(stack) if a["group"] == "webhook_sender"]

        wait_for(
            lambda: any(a["kind"] == "crash_loop" for a in of_worker()),
            90,
            what="crash_loop alert for webhook_sender",
        )
        # A crash the loop did not absorb would be sent once its group wait is over: wait that
        # long after the first exit, and a few seconds for the delivery.
        first_exit = next(
            datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            for line in stack.log_text().splitlines()
            if "exited: webhook_sender_0" in line
        )
        until = first_exit + datetime.timedelta(seconds=wait_s + 5)
        wait_for(lambda: datetime.datetime.now() >= until, wait_s + 10, what="the group wait")
        # health's stop between two tries is the loop itself: no "stopped on purpose" note
        assert ["crash_loop"] == [a["kind"] for a in of_worker()]
        (loop,) = of_worker()
        details = loop["details"]
        assert isinstance(details, dict)
        assert "note" not in details
        # the loop alert tells what the crash would have: the exit status and the stderr tail
        assert 3 == loop["exit_status"]
        assert "503" in str(loop["stderr_tail"])
        # health holds it between tries: the loop alert says when it starts next
        assert "next start in" in str(loop["message"])
        assert "next_start" in details

    def test_expected_exits_and_listeners_never_alert(self, stack):
        """queue_consumer exits 0 on purpose and the listeners run clean: no alert names them."""
        wait_for(lambda: alerts(stack), 60, what="any alert")
        quiet = {"queue_consumer", "mail_sender", "mail_catcher", *LISTENERS}
        assert [] == [a for a in alerts(stack) if a["group"] in quiet]

    def test_the_smtp_catcher_has_a_ceiling_of_its_own(self, stack):
        """mail_catcher (Python asyncio, about 15 MiB PSS) is judged by its -g rule, not the
        workers' 16 MB: the ceiling memmon announced reaches the exporter as 48 MiB."""
        series = (
            'supervisord_process_memory_limit_bytes{group="mail_catcher",name="mail_catcher"}'
            f" {48 * 1024 * 1024}"
        )

        def metrics() -> list[str]:
            with urllib.request.urlopen(stack.exporter_url + "metrics", timeout=5) as resp:  # noqa: S310
                return resp.read().decode().splitlines()

        wait_for(lambda: series in metrics(), 60, what=series)

    def test_no_listener_is_ever_restarted_by_memmon(self, stack):
        """The 16 MB ceiling applies to workers only: every listener keeps its first pid."""
        first = {n: stack.client.process_info(f"{n}:{n}") for n in LISTENERS}
        assert {"RUNNING"} == {i["statename"] for i in first.values()}
        log = (stack.run_dir / "memmon.log").read_text()
        restarted = [
            line
            for line in log.splitlines()
            if '"action": "restart"' in line and any(f'"{n}:{n}"' in line for n in LISTENERS)
        ]
        assert [] == restarted
        now = {n: stack.client.process_info(f"{n}:{n}")["pid"] for n in LISTENERS}
        assert {n: i["pid"] for n, i in first.items()} == now


def mails(stack: ExampleStack) -> list[tuple[str, str]]:
    """(envelope recipient, subject) of every mail the catch-all SMTP server kept."""
    found = []
    for path in sorted((stack.run_dir / "mail").glob("*.eml")):
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        found.append((str(msg.get("X-Envelope-To", "")), str(msg.get("Subject", ""))))
    return found


class TestExampleStackPHP:
    def test_php_mail_senders_deliver_real_mail_to_the_catch_all_server(self, stack):
        """Each of the 4 PHP mail_sender processes sends mail over SMTP; it lands in run/mail/."""
        assert 4 <= programs_in("tasks")["mail_sender"]

        def senders() -> set[str]:
            return {
                s.split(" from ")[-1]
                for to, s in mails(stack)
                if to == "customers@example.invalid" and "Order confirmation" in s
            }

        found = wait_for(lambda: len(senders()) >= 4 and senders(), 60, what="mail from 4 senders")
        assert {f"mail_sender_{i}" for i in range(4)} == found

    def test_php_memory_limit_death_alerts_once_naming_the_cause(self, stack):
        """invoice_export dies of memory_limit: one crash alert, 'ran out of PHP memory'."""
        cause = "ran out of PHP memory (memory_limit 16 MiB)"

        def crash() -> list[dict[str, object]]:
            return [a for a in alerts(stack) if a["group"] == "invoice_export"]

        # its crash alert waits out crashmail's --group-wait 30s (listeners.d/crashmail.conf)
        wait_for(crash, 90, what="an alert for invoice_export")
        wait_for(lambda: mails(stack) and any(cause in s for _, s in mails(stack)), 30, what="mail")
        [alert] = crash()
        details = alert["details"]
        assert isinstance(details, dict)
        assert ("crash", 255, "php_memory_limit", cause) == (
            alert["kind"],
            alert["exit_status"],
            details["reason"],
            details["reason_text"],
        )
        subjects = [s for to, s in mails(stack) if to == "ops@example.invalid"]
        assert 1 == sum(1 for s in subjects if cause in s and "invoice_export" in s)

    def test_php_fatal_error_without_exit_is_one_log_pattern_alert(self, stack):
        """queue_listen's job dies of a PHP fatal error, the worker runs on: one pattern alert."""

        def found() -> list[dict[str, object]]:
            return [a for a in alerts(stack) if a["group"] == "queue_listen"]

        wait_for(found, 60, what="a log_pattern alert for queue_listen")
        [alert] = found()
        details = alert["details"]
        assert isinstance(details, dict)
        assert ("log_pattern", "php_fatal") == (alert["kind"], details["pattern"])
        assert "Call to a member function send() on array" in str(alert["stderr_tail"])
        assert "thrown in" in str(alert["stderr_tail"])
        info = stack.client.process_info("queue_listen:queue_listen_0")
        assert ("RUNNING", details["pid"]) == (info["statename"], info["pid"])

    def test_php_worker_growing_past_memory_limit_minus_one_is_restarted_by_memmon(self, stack):
        """feed_importer (memory_limit=-1) grows past 16 MB: memmon restarts it, PHP never would."""

        def restart() -> list[dict[str, object]]:
            return [
                a
                for a in alerts(stack)
                if a["kind"] == "memory_restart" and a["group"] == "feed_importer"
            ]

        [alert, *_] = wait_for(restart, 90, what="memory_restart alert for feed_importer")
        details = alert["details"]
        assert isinstance(details, dict)
        assert 16 * 1024 * 1024 < details["measured_bytes"]

    def test_exporter_counts_the_php_memory_limit_death_by_reason(self, stack):
        """/metrics has supervisord_process_exits_total{reason="php_memory_limit"} 1."""
        series = (
            'supervisord_process_exits_total{group="invoice_export",name="invoice_export_0",'
            'reason="php_memory_limit"} 1'
        )

        def metrics() -> str:
            with urllib.request.urlopen(stack.exporter_url + "metrics", timeout=5) as resp:  # noqa: S310
                return str(resp.read().decode())

        wait_for(lambda: series in metrics().splitlines(), 60, what=series)
