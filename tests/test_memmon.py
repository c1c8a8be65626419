"""Unit tests of supervisor-memmon: flags, rule precedence, decisions, with fakes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listeners import memmon
from listeners.core import bus, protocol
from listeners.core.memory import Reading, Unreadable
from listeners.core.restart import Restarter
from listeners.memmon import Config, Memmon, Rule, parse_args, resolve_rule
from tests.fakes import FakeClock, FakeSupervisor, HeldWorker, InlineWorker

MB = 1024 * 1024
ENV = {"SUPERVISOR_SERVER_URL": "unix:///tmp/x.sock"}


def cfg(*argv: str) -> Config:
    return parse_args(list(argv), env=ENV)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cfg(*argv)
    assert 2 == exc.value.code
    return capsys.readouterr().err


class TestFlags:
    def test_superlance_flags_parse_with_their_meaning(self):
        """Every superlance flag is accepted with the meaning it has there."""
        c = cfg(
            "-p", "web:web_0=200MB", "-p", "mailer=16MB", "-g", "queue=1GB", "-a", "16MB",
            "-c", "-u", "1h", "-n", "Project 1", "-m", "ops@example.org",
            "-s", "/usr/bin/msmtp -t",
        )  # fmt: skip
        assert (Rule("program", "web:web_0", 200 * MB), Rule("program", "mailer", 16 * MB)) == (
            c.programs
        )
        assert (Rule("group", "queue", 1024 * MB),) == c.groups
        assert Rule("any", "*", 16 * MB) == c.any
        assert c.cumulative
        assert 3600.0 == c.uptime
        assert "Project 1" == c.name
        assert ("ops@example.org",) == c.email
        assert "/usr/bin/msmtp -t" == c.sendmail_program

    def test_long_forms_and_the_dashed_sendmail_spelling(self):
        """Long flags, including --sendmail-program, mean the same as the short ones."""
        c = cfg(
            "--program=a=1MB", "--group", "g=2MB", "--any", "3MB", "--cumulative",
            "--uptime", "30s", "--name", "x", "--email", "a@b", "--sendmail-program", "cat",
        )  # fmt: skip
        assert (Rule("program", "a", MB),) == c.programs
        assert "cat" == cfg("-a", "1MB", "--sendmail_program", "cat").sendmail_program
        assert "cat" == c.sendmail_program
        assert 30.0 == c.uptime

    def test_new_flags(self):
        """measure, interval, grace, samples, max-restarts, dry-run, exclude, file."""
        c = cfg(
            "-a", "16MB", "--measure", "pss", "--interval", "0.5", "--grace", "2m",
            "--samples", "3", "--max-restarts", "3/10m", "--dry-run", "--exclude", "web",
            "--exclude", "cron:*", "--alert-file", "/tmp/a.jsonl", "--no-skip-listeners",
        )  # fmt: skip
        assert ("pss", 0.5, 120.0, 3) == (c.measure, c.interval, c.grace, c.samples)
        assert (3, 600.0) == c.max_restarts
        assert c.dry_run
        assert ("web", "cron:*") == c.exclude
        assert "/tmp/a.jsonl" == c.alert_file
        assert not c.skip_listeners

    def test_defaults(self):
        """Defaults: rss, no timer, one sample, listeners skipped, sendmail -t -i."""
        c = cfg("-a", "16MB")
        assert ("rss", None, 1, True) == (c.measure, c.interval, c.samples, c.skip_listeners)
        assert "/usr/sbin/sendmail -t -i" == c.sendmail_program
        assert (None, False, None) == (c.max_restarts, c.dry_run, c.uptime)
        assert ((0, 0.25), 60.0) == (c.max_unavailable, c.restart_window)

    def test_mass_restart_guard_flags(self):
        """--max-unavailable takes a count or a share; --restart-window a duration."""
        c = cfg("-a", "16MB", "--max-unavailable", "3", "--restart-window", "5m")
        assert ((3, 0.0), 300.0) == (c.max_unavailable, c.restart_window)
        assert (0, 0.5) == cfg("-a", "1MB", "--max-unavailable", "50%").max_unavailable

    @pytest.mark.parametrize(
        ("argv", "needle"),
        [
            (["-a", "16XB"], "'16XB'"),
            (["-a", "-5MB"], "'-5MB'"),
            (["--any=-5MB"], "'-5MB'"),
            (["-p", "worker"], "NAME=SIZE"),
            (["-p", "=16MB"], "NAME=SIZE"),
            (["-g", "web=lots"], "'lots'"),
            (["-a", "16MB", "--bogus"], "--bogus"),
            (["-a", "16MB", "--measure", "vss"], "'vss'"),
            (["-a", "16MB", "--interval", "0"], "'0'"),
            (["-a", "16MB", "--samples", "0"], "'0'"),
            (["-a", "16MB", "--max-restarts", "3"], "'3'"),
            (["-a", "16MB", "-u", "soon"], "'soon'"),
            (["-a", "16MB", "--max-unavailable", "0"], "'0'"),
            (["-a", "16MB", "--max-unavailable", "150%"], "'150%'"),
            (["-a", "16MB", "--restart-window", "0"], "'0'"),
            ([], "no limit"),
        ],
    )
    def test_bad_input_exits_2_naming_the_value(self, capsys, argv, needle):
        """A bad flag value is a usage error (exit 2) whose message names the value."""
        assert needle in usage_error(capsys, *argv)


class TestSizeForms:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("16MB", 16 * MB),
            ("16M", 16 * MB),
            ("16MiB", 16 * MB),
            ("16mb", 16 * MB),
            ("1.5GB", 1536 * MB),
            ("512KB", 512 * 1024),
            ("512K", 512 * 1024),
            ("1G", 1024 * MB),
            ("1048576", MB),
        ],
    )
    def test_sizes(self, text, expected):
        """Every documented size form parses to bytes in powers of 1024, as superlance does."""
        assert expected == cfg("-a", text).any.limit  # type: ignore[union-attr]

    @given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["K", "KB", "KiB", "M"]))
    def test_any_positive_size_round_trips(self, n, unit):
        """N<unit> is N times the unit, whatever the spelling."""
        factor = 1024 if unit.startswith("K") else MB
        assert n * factor == cfg("-p", f"w={n}{unit}").programs[0].limit

    @given(st.text(max_size=12))
    def test_namesize_never_raises_anything_but_a_usage_error(self, text):
        """Arbitrary -p text either parses or is a clean usage error, never a traceback."""
        code = None
        try:
            cfg("-p", text)
        except SystemExit as exc:
            code = exc.code
        assert code in (None, 2)

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("1d", 86400.0)],
    )
    def test_durations(self, text, seconds):
        """Durations take s, m, h and d (and bare seconds)."""
        assert seconds == cfg("-a", "1MB", "--grace", text).grace


class TestRulePrecedence:
    def config(self) -> Config:
        return cfg(
            "-a", "1MB", "-g", "web=2MB", "-p", "web=3MB", "-p", "web_0=4MB", "-p", "web:web_0=5MB",
        )  # fmt: skip

    def test_group_colon_name_beats_everything(self):
        """-p group:name is the most specific rule."""
        assert 5 * MB == resolve_rule(self.config(), "web", "web_0").limit  # type: ignore[union-attr]

    def test_process_name_beats_program_name(self):
        """A bare -p process name beats a -p program name."""
        c = cfg("-p", "web=3MB", "-p", "web_1=4MB")
        assert 4 * MB == resolve_rule(c, "web", "web_1").limit  # type: ignore[union-attr]

    def test_program_name_covers_all_its_processes(self):
        """-p with a program name covers each of its numprocs processes."""
        assert 3 * MB == resolve_rule(self.config(), "web", "web_7").limit  # type: ignore[union-attr]

    def test_group_beats_any(self):
        """-g beats -a; -a covers the rest."""
        c = cfg("-a", "1MB", "-g", "web=2MB")
        assert 2 * MB == resolve_rule(c, "web", "web_3").limit  # type: ignore[union-attr]
        assert 1 * MB == resolve_rule(c, "cron", "cron").limit  # type: ignore[union-attr]

    def test_skipped_processes_keep_only_an_explicit_program_rule(self):
        """Excluded processes and listeners escape -g/-a but not a -p naming them."""
        c = cfg("-a", "1MB", "-p", "crashmail=64MB")
        assert resolve_rule(c, "exporter", "exporter", skipped=True) is None
        assert 64 * MB == resolve_rule(c, "crashmail", "crashmail", skipped=True).limit  # type: ignore[union-attr]

    def test_exclude_globs_match_group_or_full_name(self):
        """--exclude takes a group, a group:name, or a glob of either."""
        assert "web" == memmon.excluded_by(["web"], "web", "web_0")
        assert "cron:*" == memmon.excluded_by(["cron:*"], "cron", "cron_1")
        assert memmon.excluded_by(["cron:*"], "web", "web_0") is None

    def test_unknown_program_names(self):
        """-p names are checked against supervisord's processes."""
        infos = [{"group": "web", "name": "web_0"}]
        c = cfg("-p", "web=1MB", "-p", "web_0=1MB", "-p", "web:web_0=1MB", "-p", "nope=1MB")
        assert ["nope"] == memmon.unknown_programs(c, infos)


# --------------------------------------------------------------------------- the handler


def fake_supervisord(infos: list[dict[str, Any]] | None = None) -> FakeSupervisor:
    """The shared fake as memmon sees supervisord: a stop it polls for is over at once."""
    return FakeSupervisor(infos or [], instant_stop=True)


class FakeMeter:
    def __init__(self) -> None:
        self.values: dict[int, Reading | Unreadable] = {}
        self.asked: list[dict[str, int]] = []

    def measure(self, pids: dict[str, int]) -> dict[str, Reading | Unreadable]:
        self.asked.append(dict(pids))
        return {k: self.values.get(p, Reading(1 * MB)) for k, p in pids.items()}

    def close(self) -> None:
        pass


def info(group: str, name: str, pid: int, state: str = "RUNNING") -> dict[str, Any]:
    return {"group": group, "name": name, "pid": pid, "statename": state, "start": 1.0}


def state_event(group: str, name: str, state: str, pid: int | None = None) -> protocol.Event:
    payload = f"processname:{name} groupname:{group} from_state:STARTING"
    if pid:
        payload += f" pid:{pid}"
    header = protocol.parse_header(
        protocol.format_event(f"PROCESS_STATE_{state}", payload).partition("\n")[0]
    )
    return protocol.parse_event(header, payload)


def tick() -> protocol.Event:
    text = protocol.format_event("TICK_5", "when:1")
    return protocol.parse_event(protocol.parse_header(text.partition("\n")[0]), "when:1")


def make(*argv: str, infos=None, pools=(), self_key=None, meter=None, check_at_start=False):
    client = fake_supervisord(infos or [info("web", "web_0", 100), info("web", "web_1", 101)])
    meter = meter or FakeMeter()
    rpc = InlineWorker()
    clock = FakeClock()
    m = Memmon(
        cfg(*argv),
        client,
        meter=meter,  # type: ignore[arg-type]
        rpc=rpc,
        checker=InlineWorker(),
        restarter=Restarter(client, rpc, clock=clock),
        clock=clock,
        wall=clock,
        host="h",
        self_key=self_key,
        own_pid=1,
        pools=lambda: frozenset(pools),
    )
    # start() queues a first check; these tests run each check themselves, from a known state
    if check_at_start:
        m.start(client.all_process_info())
        return m, client, meter, clock
    m.checker, inline = HeldWorker(), m.checker
    m.start(client.all_process_info())
    assert ["_run_check"] == m.checker.calls  # type: ignore[attr-defined]
    m.checker = inline
    m._check_queued = False
    # Events flow: memmon has seen PROCESS_STATE, so restarts are the event-driven kind.
    m.handle(state_event("web", "web_0", "RUNNING", 100))
    return m, client, meter, clock


class TestDecisions:
    def test_over_the_limit_is_restarted_once_and_announced(self):
        """One check over the limit: stop, start on STOPPED, a MemoryRestart on the bus."""
        m, client, meter, _ = make("-a", "16MB")
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        assert [("stop", "web:web_0")] == client.acts()
        m.handle(tick())  # still pending: no second stop
        assert [("stop", "web:web_0")] == client.acts()
        m.handle(state_event("web", "web_0", "STOPPED", 100))
        assert [("stop", "web:web_0"), ("start", "web:web_0")] == client.acts()
        [restart] = client.bus("memory_restart")
        assert (100, 20 * MB, 16 * MB, "web") == (
            restart["pid"], restart["measured_bytes"], restart["limit_bytes"], restart["group"]
        )  # fmt: skip

    def test_under_the_limit_nothing_happens(self):
        """Processes under their limit are measured and left alone."""
        m, client, meter, _ = make("-a", "16MB")
        m.handle(tick())
        assert [] == client.acts()
        assert {"web:web_0": 100, "web:web_1": 101} == meter.asked[-1]

    def test_no_rpc_per_check(self):
        """Checks read no XML-RPC: only the start-up getAllProcessInfo and the limits."""
        m, client, _, _ = make("-a", "16MB")
        for _ in range(5):
            m.handle(tick())
        assert 1 == client.methods().count("all_process_info")
        assert 1 == len(client.bus("memory_limits"))

    def test_samples_need_consecutive_checks(self):
        """--samples 3 restarts at the third consecutive over-limit check, not before."""
        m, client, meter, _ = make("-a", "16MB", "--samples", "3")
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        m.handle(tick())
        assert [] == client.acts()
        meter.values[100] = Reading(1 * MB)
        m.handle(tick())  # back under: the count starts again
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        m.handle(tick())
        assert [] == client.acts()
        m.handle(tick())
        assert [("stop", "web:web_0")] == client.acts()

    def test_grace_after_a_start(self):
        """--grace leaves a freshly started process alone."""
        m, client, meter, clock = make("-a", "16MB", "--grace", "30s")
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        assert [] == client.acts()
        clock.now += 31
        m.handle(tick())
        assert [("stop", "web:web_0")] == client.acts()

    def test_dry_run_only_reports(self):
        """--dry-run announces what it would do and restarts nothing."""
        m, client, meter, _ = make("-a", "16MB", "--dry-run")
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        m.handle(tick())
        assert [] == client.acts()
        [restart] = client.bus("memory_restart")
        assert restart["dry_run"]

    def test_max_restarts_stops_and_alerts_once(self):
        """--max-restarts 2/1h: two restarts, then RestartsExhausted once, then nothing."""
        m, client, meter, clock = make(
            "-a", "16MB", "--max-restarts", "2/1h", "--max-unavailable", "100%"
        )
        meter.values[100] = Reading(20 * MB)
        for _ in range(2):
            m.handle(tick())
            m.handle(state_event("web", "web_0", "STOPPED", 100))
            m.handle(state_event("web", "web_0", "STARTING"))
            m.handle(state_event("web", "web_0", "RUNNING", 100))
            clock.now += 1
        for _ in range(3):
            m.handle(tick())
        assert 2 == len([a for a in client.acts() if a[0] == "stop"])
        [gone] = client.bus("restarts_exhausted")
        assert (2, 3600.0) == (gone["restarts"], gone["window_seconds"])

    def test_ceilings_and_given_up_processes_are_announced_again_once_a_minute(self):
        """An exporter restarted later learns them: unchanged ceilings go out again after
        LIMITS_REPEAT, with the processes memmon gave up on; between, nothing is repeated."""
        from listeners.memmon import LIMITS_REPEAT

        m, client, meter, clock = make(
            "-a", "16MB", "--max-restarts", "1/1h", "--max-unavailable", "100%"
        )
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())  # restarted once
        m.handle(state_event("web", "web_0", "STOPPED", 100))
        m.handle(state_event("web", "web_0", "RUNNING", 100))
        m.handle(tick())  # over again: restarts exhausted
        announced = client.bus("memory_limits")
        assert ["web:web_0"] == announced[-1]["exhausted"]
        count = len(announced)
        clock.now += LIMITS_REPEAT - 1
        m.handle(tick())
        assert count == len(client.bus("memory_limits"))
        clock.now += 2
        m.handle(tick())
        again = client.bus("memory_limits")
        assert count + 1 == len(again)
        assert (again[-1]["limits"], again[-1]["exhausted"]) == (
            {"web:web_0": 16 * MB, "web:web_1": 16 * MB},
            ["web:web_0"],
        )

    def test_never_itself_nor_the_event_listener_pools(self):
        """Its own process and every [eventlistener:x] pool are not judged by -a."""
        infos = [info("memmon", "memmon", 7), info("crashmail", "crashmail", 8)]
        infos.append(info("web", "web_0", 100))
        m, client, meter, _ = make(
            "-a", "1KB", infos=infos, pools={"memmon", "crashmail"}, self_key="memmon:memmon"
        )
        meter.values = {7: Reading(30 * MB), 8: Reading(30 * MB)}
        m.handle(tick())
        assert {"web:web_0": 100} == meter.asked[-1]
        assert {"web:web_0": 1024} == client.bus("memory_limits")[-1]["limits"]

    def test_a_worker_named_like_a_listener_is_judged(self):
        """Workers are judged whatever their name or command line; only the pools are skipped."""
        infos = [info("crashmail", "crashmail", 8), info("queue", "queue_crashmail", 9)]
        m, _, meter, _ = make("-a", "1KB", infos=infos, pools={"crashmail"})
        m.handle(tick())
        assert 9 == meter.asked[-1]["queue:queue_crashmail"]
        assert "crashmail:crashmail" not in meter.asked[-1]

    def test_a_ceiling_under_1_mib_is_said_at_start(self, capsys):
        """-a 16 is 16 bytes (superlance reads a bare number as bytes): it would restart
        every worker; memmon says so at start, naming the rule; 16MB says nothing."""
        make("-a", "16", "-p", "web_0=16MB")
        tiny = [ln for ln in capsys.readouterr().err.splitlines() if "memmon.limit_tiny" in ln]
        assert 1 == len(tiny), tiny
        assert '"limit_bytes": 16' in tiny[0]
        assert "give a unit, e.g. 16MB" in tiny[0]

    def test_no_skip_listeners_judges_them(self):
        """--no-skip-listeners puts the listeners back under -a."""
        infos = [info("crashmail", "crashmail", 8)]
        m, _, meter, _ = make("-a", "1KB", "--no-skip-listeners", infos=infos, pools={"crashmail"})
        m.handle(tick())
        assert 8 == meter.asked[-1]["crashmail:crashmail"]

    def test_excluded_groups_are_not_measured(self):
        """--exclude removes a group from -a."""
        m, _, meter, _ = make("-a", "1KB", "--exclude", "web")
        m.handle(tick())
        assert {} == meter.asked[-1]

    def test_vanished_and_denied_processes_are_skipped(self):
        """Gone or AccessDenied readings are logged and skipped, nothing restarts."""
        m, client, meter, _ = make("-a", "1KB")
        meter.values = {100: Unreadable("gone"), 101: Unreadable("denied")}
        m.handle(tick())
        assert [] == client.acts()

    def test_events_keep_pids_current(self):
        """A RUNNING event's pid is the one measured next; a stopped process is not measured."""
        m, _, meter, _ = make("-a", "16MB")
        m.handle(state_event("web", "web_0", "RUNNING", 555))
        m.handle(state_event("web", "web_1", "STOPPED", 101))
        m.handle(tick())
        assert {"web:web_0": 555} == meter.asked[-1]

    def test_reconcile_on_tick_without_state_events(self):
        """With no PROCESS_STATE subscription, a check 60 s later reconciles first."""
        client = fake_supervisord([info("web", "web_0", 100)])
        clock = FakeClock()
        m = Memmon(
            cfg("-a", "16MB"),
            client,
            meter=FakeMeter(),  # type: ignore[arg-type]
            rpc=InlineWorker(),
            checker=InlineWorker(),
            clock=clock,
            wall=clock,
            host="h",
            own_pid=1,
        )
        m.start(client.all_process_info())
        m.handle(tick())
        assert 1 == client.methods().count("all_process_info")
        clock.now += 61
        m.handle(tick())
        assert 2 == client.methods().count("all_process_info")

    def test_email_and_file_notices(self, tmp_path):
        """-m sends through sendmail, --alert-file appends a JSON line; uptime gates both."""
        out = tmp_path / "mail.txt"
        notices = tmp_path / "alerts.jsonl"
        m, _, meter, _ = make(
            "-a", "16MB", "-m", "ops@example.org", "-s", f"tee {out}", "-n", "edge",
            "--alert-file", str(notices),
        )  # fmt: skip
        m._notifier = InlineWorker()
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        mail = out.read_text()
        assert "Subject: memmon [edge]: [h] web:web_0 was restarted" in mail
        assert "To: ops@example.org" in mail
        [line] = notices.read_text().splitlines()
        assert "memory_restart" == json.loads(line)["kind"]

    def test_the_gave_up_notice_says_what_to_do(self, tmp_path):
        """--max-restarts used up: the file notice says memmon stopped and the command to run
        once the leak is fixed."""
        notices = tmp_path / "alerts.jsonl"
        m, _, meter, clock = make(
            "-a", "16MB", "--max-restarts", "1/1h", "--max-unavailable", "100%",
            "--alert-file", str(notices),
        )  # fmt: skip
        m._notifier = InlineWorker()
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        m.handle(state_event("web", "web_0", "STOPPED", 100))
        m.handle(state_event("web", "web_0", "STARTING"))
        m.handle(state_event("web", "web_0", "RUNNING", 100))
        clock.now += 1
        m.handle(tick())
        gave_up = list(map(json.loads, notices.read_text().splitlines()))
        assert ["memory_restart", "restarts_exhausted"] == [a["kind"] for a in gave_up]
        text = gave_up[1]["message"]
        # the same words crashmail sends for memmon's bus message (notify/announced.py)
        assert "memmon restarted it 1 time in 1 hour and stopped restarting it" in text
        assert text.endswith(
            "Restart it by hand after fixing the leak: supervisorctl restart web:web_0"
        )

    def test_uptime_limits_mail_to_early_restarts(self, tmp_path):
        """-u: a process up longer than the limit is restarted without a notice."""
        notices = tmp_path / "alerts.jsonl"
        m, client, meter, clock = make("-a", "16MB", "-u", "10s", "--alert-file", str(notices))
        m._notifier = InlineWorker()
        clock.now += 60
        meter.values[100] = Reading(20 * MB)
        m.handle(tick())
        assert [("stop", "web:web_0")] == client.acts()
        assert not notices.exists()

    def test_bus_message_decodes(self):
        """What memmon publishes is valid for bus.decode."""
        _, client, _, _ = make("-a", "16MB")
        [limits] = client.bus("memory_limits")
        assert isinstance(bus.decode(json.dumps(limits)), bus.MemoryLimits)


def group_removed(group: str) -> protocol.Event:
    text = protocol.format_event("PROCESS_GROUP_REMOVED", f"groupname:{group}\n")
    return protocol.parse_event(
        protocol.parse_header(text.partition("\n")[0]), f"groupname:{group}\n"
    )


def php_group(n: int = 8) -> list[dict[str, Any]]:
    return [info("php_mail", f"php_mail_{i}", 200 + i) for i in range(n)]


class TestMassRestartGuard:
    def test_most_of_a_group_over_holds_every_restart_and_alerts_once(self, tmp_path):
        """8 of 8 over: nothing restarted, one RestartsHeld on the bus, one notice, one log."""
        notices = tmp_path / "alerts.jsonl"
        m, client, meter, _ = make("-a", "16MB", "--alert-file", str(notices), infos=php_group())
        m._notifier = InlineWorker()
        meter.values = {200 + i: Reading(18 * MB + i * 1024) for i in range(8)}
        for _ in range(3):
            m.handle(tick())
        assert [] == client.acts()
        [held] = client.bus("restarts_held")
        assert (8, 8, "php_mail", "rss", True) == (
            held["over"], held["judged"], held["group"], held["measure"], held["at_start"]
        )  # fmt: skip
        text = bus.decode(json.dumps(held)).describe()  # type: ignore[union-attr]
        assert text.startswith("8 of 8 php_mail over 16.0 MiB rss (median 18.0 MiB): nothing")
        assert text.endswith("try --measure pss")
        [line] = notices.read_text().splitlines()
        assert "restarts_held" == json.loads(line)["kind"]

    def test_the_guard_lets_go_once_the_group_is_back_under(self):
        """After the group is mostly under again, a real leaker is restarted."""
        m, client, meter, _ = make("-a", "16MB", infos=php_group())
        meter.values = {200 + i: Reading(18 * MB) for i in range(8)}
        m.handle(tick())
        meter.values = {200: Reading(40 * MB)}
        m.handle(tick())
        assert [("stop", "php_mail:php_mail_0")] == client.acts()
        assert not m.guard.held

    def test_first_check_warns_when_most_processes_are_over(self, capsys):
        """At start, memmon says the ceiling looks wrong when most judged processes are over."""
        m, _, meter, _ = make("-a", "16MB", infos=php_group())
        meter.values = {200 + i: Reading(18 * MB) for i in range(8)}
        m.handle(tick())
        assert 1 == capsys.readouterr().err.count("memmon.ceiling_suspect")

    def test_a_single_leaker_in_a_small_group_is_still_restarted(self):
        """One of one over is a leak, not a misconfiguration."""
        m, client, meter, _ = make("-a", "16MB", infos=[info("leak", "leak", 300)])
        meter.values = {300: Reading(40 * MB)}
        m.handle(tick())
        assert [("stop", "leak:leak")] == client.acts()

    def test_max_unavailable_bounds_restarts_per_window(self):
        """3 of 8 leaking, 25%: two restarted in the window, the third after it."""
        m, client, meter, clock = make("-a", "16MB", infos=php_group())
        meter.values = {200: Reading(40 * MB), 201: Reading(40 * MB), 202: Reading(40 * MB)}
        m.handle(tick())
        assert 2 == len(client.acts())
        for i in (0, 1):
            m.handle(state_event("php_mail", f"php_mail_{i}", "STOPPED", 200 + i))
            m.handle(state_event("php_mail", f"php_mail_{i}", "RUNNING", 210 + i))
        m.handle(tick())
        assert 4 == len(client.acts())  # two stops, two starts; the third waits
        clock.now += 61
        m.handle(tick())
        assert ("stop", "php_mail:php_mail_2") == client.acts()[-1]


class TestUnreadableAndPruning:
    def test_denied_processes_are_reported_at_start_not_at_the_first_tick(self, capsys):
        """start() checks once: with events=TICK_60 the warning would otherwise wait 60 s."""
        meter = FakeMeter()
        meter.values = {101: Unreadable("denied", "Permission denied")}
        m, client, _, _ = make("-a", "16MB", meter=meter, check_at_start=True)
        assert 1 == capsys.readouterr().err.count("memmon.unreadable")
        assert [["web:web_1"]] == [msg["processes"] for msg in client.bus("processes_unreadable")]
        assert 1 == m.checks

    def test_denied_processes_are_named_once_and_announced(self, capsys):
        """Permission denied: one warning naming them, one ProcessesUnreadable on the bus."""
        m, client, meter, _ = make("-a", "16MB")
        meter.values = {101: Unreadable("denied", "Permission denied")}
        m.handle(tick())
        m.handle(tick())
        err = capsys.readouterr().err
        assert 1 == err.count("memmon.unreadable")
        assert "web:web_1" in err
        [msg] = client.bus("processes_unreadable")
        assert ["web:web_1"] == msg["processes"]
        meter.values = {}
        m.handle(tick())
        assert [] == client.bus("processes_unreadable")[-1]["processes"]

    def test_the_first_check_announces_its_set_even_when_empty(self):
        """A memmon that can read everything says so once, clearing an earlier run's list."""
        m, client, _, _ = make("-a", "16MB")
        m.handle(tick())
        m.handle(tick())
        assert [[]] == [msg["processes"] for msg in client.bus("processes_unreadable")]

    def test_a_removed_group_leaves_nothing_behind(self):
        """PROCESS_GROUP_REMOVED drops the group's watches, held state and budget."""
        m, _, meter, _ = make("-a", "16MB", infos=php_group())
        meter.values = {200 + i: Reading(18 * MB) for i in range(8)}
        m.handle(tick())
        assert m.watches
        assert m.guard.held
        m.handle(group_removed("php_mail"))
        assert ([], set()) == ([k for k in m.watches if k.startswith("php_mail:")], m.guard.held)

    def test_reconcile_forgets_processes_gone_from_supervisord(self):
        """A process missing from getAllProcessInfo loses its watch at the reconcile."""
        m, client, _, _ = make("-a", "16MB")
        m.handle(tick())
        assert {"web:web_0", "web:web_1"} == set(m.watches)
        client.infos = [info("web", "web_0", 100)]
        m._reconcile()
        assert {"web:web_0"} == set(m.watches)

    def test_reconcile_forgets_the_restart_budget_of_a_group_whose_removal_was_lost(self):
        """A group restarted within the window, then gone without its REMOVED event: the
        reconcile drops its budget too (it was kept for good)."""
        m, client, meter, _ = make("-a", "16MB", infos=[info("web", "web_0", 100)])
        meter.values = {100: Reading(18 * MB)}
        m.handle(tick())
        assert m.budget.in_window("web")
        client.infos = []
        m._reconcile()
        assert ({}, {}) == (m.budget._spent, m.watches)


class TestMain:
    def test_unreachable_supervisord_is_said_clearly(self, capsys):
        """With supervisord down at start memmon says so and exits before READY."""
        code = memmon.main(["-a", "16MB", "--server-url", "unix:///nonexistent/s.sock"])
        err = capsys.readouterr()
        assert 1 == code
        assert "" == err.out
        assert "cannot reach supervisord at unix:///nonexistent/s.sock" in err.err
