"""supervisor-exporter: Prometheus metrics and a status page, fed by supervisord's events.

It runs as an event listener, so it sees every transition (a polling exporter misses what
happens between scrapes), and serves HTTP from a thread of the same process. State comes
from PROCESS_STATE / PROCESS_GROUP events, one getAllProcessInfo at start and a reconcile on
TICK_60 (or every ``--reconcile-interval``), always on a background thread. A scrape makes no
XML-RPC call: it copies the state under a lock and reads /proc for memory and CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from listeners.core import bus, cli, protocol
from listeners.core.background import Submitter, Worker
from listeners.core.crashloop import DEFAULT_LOOP
from listeners.core.exits import OomWatch, classify, exit_from_log, oom_paths, read_oom_kills
from listeners.core.log import configure, get_logger
from listeners.core.names import info_name, split_name
from listeners.core.resync import Resync
from listeners.core.supervisor import (
    Connection,
    Supervisor,
    SupervisorError,
    SupervisorRPC,
    self_name,
)
from listeners.core.units import parse_duration, parse_rate
from listeners.metrics.history import History
from listeners.metrics.proc import ProcReader
from listeners.metrics.state import ExporterState

if TYPE_CHECKING:
    from listeners.metrics.routes import Site
    from listeners.metrics.webconfig import WebConfig
    from listeners.taskfiles.layout import Layout

__all__ = ["Config", "ExporterHandler", "build_parser", "main", "parse_args"]


log = get_logger("listeners.exporter")

#: How much of supervisord's own log is read to find an exit status it no longer reports.
EXIT_LOG_BYTES = 65536

DEFAULT_LISTEN = "127.0.0.1:9876"
DEFAULT_DASHBOARD = "http://127.0.0.1:8080/"
#: Above this many exits waiting for their status, one getAllProcessInfo is cheaper.
BULK_EXIT_LOOKUP = 16


@dataclass(frozen=True)
class Config:
    connection: Connection
    listen_host: str
    listen_port: int
    web_config_file: Path | None
    dashboard_url: str
    loop: tuple[int, float]
    reconcile_interval: float | None
    log_level: str
    grafana_url: str | None = None
    history_step: float = 15.0
    tasks_conf: Path | None = None


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    forms = "HOST:PORT, for example 127.0.0.1:9876, [::1]:9876 or 0.0.0.0:9876"
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"invalid listen address {text!r}: expected {forms}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"invalid listen address {text!r}: expected {forms}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid listen address {text!r}: write IPv6 hosts as [::1]:9876")
    return host, int(port)


def parse_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid URL {text!r}: expected http://host:port/ or https://...")
    return text


def parse_grafana(text: str) -> str:
    unknown = sorted(set(re.findall(r"\{([^{}]*)\}", text)) - {"group", "name"})
    if unknown:
        raise ValueError(
            f"invalid URL {text!r}: unknown placeholder {{{unknown[0]}}} (only {{group}} and"
            " {name} are replaced)"
        )
    parse_url(text.replace("{group}", "g").replace("{name}", "n"))
    return text


def parse_interval(text: str) -> float:
    value = parse_duration(text)
    if value < 0.1:
        raise ValueError(f"invalid interval {text!r}: must be at least 0.1s")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(
        formatter_class=cli.HelpFormatter,
        prog="supervisor-exporter",
        description="Prometheus metrics and a status page for supervisord, as an event"
        " listener (events=PROCESS_STATE,PROCESS_GROUP,TICK_60,REMOTE_COMMUNICATION,"
        "SUPERVISOR_STATE_CHANGE).",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        type=cli.arg_type(parse_listen, "listen address"),
        metavar="HOST:PORT",
        help="where to serve /metrics, /healthz and the status page (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, bcrypt basic auth); default: plain HTTP",
    )
    parser.add_argument(
        "--dashboard-url",
        default=DEFAULT_DASHBOARD,
        type=cli.arg_type(parse_url, "URL"),
        help="supervisord's web dashboard, linked from the status page (default: %(default)s)",
    )
    parser.add_argument(
        "--grafana-url",
        type=cli.arg_type(parse_grafana, "URL"),
        metavar="URL",
        help="a Grafana panel linked from each process's page; {group} and {name} are"
        " replaced, e.g. https://grafana/d/abc/workers?var-group={group}&var-name={name}",
    )
    parser.add_argument(
        "--tasks-conf",
        metavar="FILE",
        help="the supervisord.conf whose tasks/ and tasks_disabled/ the status page lists;"
        " operators can enable and disable them there (the same code as supervisor-tasks)",
    )
    parser.add_argument(
        "--history-step",
        default=15.0,
        type=cli.arg_type(parse_interval, "interval"),
        metavar="DURATION",
        help="how often the status page's memory chart samples each process; an hour of"
        " samples is kept (default: 15s)",
    )
    parser.add_argument(
        "--loop",
        default=DEFAULT_LOOP,
        type=cli.arg_type(parse_rate, "rate"),
        metavar="COUNT/WINDOW",
        help="crash loop: COUNT unexpected exits within WINDOW, the rule crashmail uses"
        " (default: 3/5m)",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=cli.arg_type(parse_interval, "interval"),
        metavar="DURATION",
        help="reconcile with getAllProcessInfo every DURATION (e.g. 30s) instead of on each"
        " TICK_60 event",
    )
    cli.add_connection_args(parser)
    cli.add_logging_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    connection = cli.connection_from_args(parser, args)
    host, port = args.listen
    web_config = Path(args.web_config) if args.web_config else None
    loop = (int(args.loop[0]), float(args.loop[1]))
    if args.tasks_conf and not Path(args.tasks_conf).is_file():
        parser.error(
            f"invalid --tasks-conf {args.tasks_conf}: no such file (give the supervisord.conf"
            " whose tasks/ and tasks_disabled/ the page lists)"
        )
    return Config(
        connection=connection,
        listen_host=host,
        listen_port=port,
        web_config_file=web_config,
        dashboard_url=args.dashboard_url,
        loop=loop,
        reconcile_interval=args.reconcile_interval,
        log_level=args.log_level,
        grafana_url=args.grafana_url,
        history_step=args.history_step,
        tasks_conf=Path(args.tasks_conf) if args.tasks_conf else None,
    )


# --------------------------------------------------------------------------- events


class ExporterHandler(protocol.Handler):
    """Feeds events into the state; RPC (reconcile, exit statuses) goes to ``worker``."""

    def __init__(
        self,
        state: ExporterState,
        rpc: SupervisorRPC,
        worker: Submitter,
        *,
        reconcile_interval: float | None = None,
        oom: OomWatch | None = None,
    ) -> None:
        self.state = state
        self.rpc = rpc
        self.worker = worker
        self.timer_interval = reconcile_interval
        self._pending_lock = threading.Lock()
        self._reconcile_pending = False
        # every ask (start, TICK_60 or the timer, a group added, lost events, supervisord back)
        # is answered by the next read; reads never overlap; a failed one is retried
        self.resync = Resync()
        self._exits: set[str] = set()
        self._asked_log: set[str] = set()
        # unexpected exits waiting to be classified: name -> did the OOM counter move
        self._unexpected: dict[str, bool | None] = {}
        self.oom = oom if oom is not None else OomWatch(lambda: None)

    # The event loop side: cheap, never blocks.

    def handle(self, event: protocol.Event) -> None:
        self.state.count_event()
        if isinstance(event, protocol.ProcessStateEvent):
            self._process(event)
        elif isinstance(event, protocol.ProcessGroupEvent):
            self.state.apply_group(event)
            if event.added:
                self.request_reconcile("group added")
        elif isinstance(event, protocol.TickEvent):
            self.oom.sample(time.time())
            if event.period == 60 and self.timer_interval is None:
                self.request_reconcile("tick")
        elif isinstance(event, protocol.RemoteCommunicationEvent):
            if event.type in (bus.MEMMON_TYPE, bus.HEALTH_TYPE, bus.CRASHMAIL_TYPE):
                try:
                    message = bus.decode(event.data)
                except ValueError as exc:
                    log.warning("exporter.bad_bus_message", error=str(exc), data=event.data[:200])
                    return
                self.state.apply_bus(message)
        elif isinstance(event, protocol.SupervisorStateEvent):
            if event.state == "STOPPING":
                self.state.mark_down()
            else:
                self.request_reconcile(f"supervisord {event.state.lower()}")

    def _process(self, event: protocol.ProcessStateEvent) -> None:
        self.state.apply_process(event)
        if event.state in ("EXITED", "BACKOFF") and event.full_name not in self.state.ignore:
            if event.state == "EXITED" and not event.expected:
                with self._pending_lock:
                    self._unexpected[event.full_name] = self.oom.fired(time.time())
            self.request_exit_status(event.full_name)

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        self.state.add_lost(count)
        self.request_reconcile("lost")

    def on_timer(self) -> None:
        self.request_reconcile("timer")

    def close(self) -> None:
        self.worker.close(timeout=5.0)

    def request_reconcile(self, why: str = "start") -> None:
        self.resync.want(why)
        with self._pending_lock:
            if self._reconcile_pending:
                return
            self._reconcile_pending = True
        self.worker.submit(self._answer)

    def request_exit_status(self, name: str) -> None:
        with self._pending_lock:
            first = not self._exits
            self._exits.add(name)
        if first:
            self.worker.submit(self.fetch_exit_statuses)

    # The worker side: RPC calls.

    def _answer(self) -> None:
        with self._pending_lock:
            self._reconcile_pending = False
        if self.resync.take() is not None:
            self._read()

    def reconcile(self) -> None:
        """Read the process table now (on the worker thread), asked or not."""
        self.resync.begin()
        self._read()

    def _read(self) -> None:
        started = time.monotonic()
        try:
            version = self.rpc.version()
            identification = self.rpc.identification()
            infos = self.rpc.all_process_info()
        except SupervisorError as exc:
            self.resync.done(ok=False)
            self.state.reconcile_failed()
            log.warning("exporter.reconcile_failed", error=str(exc))
            return
        self.resync.done()
        self.state.apply_reconcile(infos, version, identification)
        # a FATAL or BACKOFF found at the first reconcile (the exporter started after it, or
        # was restarted) has no status from supervisord: its log has it
        for name in self.state.without_exit_status():
            if name not in self._asked_log:  # once each: a log rotated past it stays silent
                self._asked_log.add(name)
                self.request_exit_status(name)
        log.debug(
            "exporter.reconciled",
            processes=len(infos),
            seconds=round(time.monotonic() - started, 4),
        )

    def fetch_exit_statuses(self) -> None:
        # supervisord's events do not carry the exit code; getProcessInfo does.
        with self._pending_lock:
            names, self._exits = self._exits, set()
            unexpected, self._unexpected = self._unexpected, {}
        try:
            if len(names) > BULK_EXIT_LOOKUP:
                infos: Mapping[str, dict[str, Any]] = {
                    info_name(i): i for i in self.rpc.all_process_info()
                }
            else:
                infos = {n: self.rpc.process_info(n) for n in names}
        except SupervisorError as exc:
            log.info("exporter.exit_status_unavailable", error=str(exc))
            infos = {}
        log_text: str | None = None

        def from_log(name: str) -> tuple[int | None, str]:
            # Respawned already, or a start that failed before startsecs (BACKOFF/FATAL):
            # supervisord reports 0 there; its own log's "exited: NAME (exit status N" has it.
            nonlocal log_text
            if log_text is None:
                try:
                    log_text = str(self.rpc.call("supervisor.readLog", -EXIT_LOG_BYTES, 0))
                except SupervisorError as exc:
                    log.info("exporter.exit_status_unavailable", error=str(exc))
                    log_text = ""
            return exit_from_log(log_text, split_name(name)[1])

        self._classify(unexpected, infos, from_log, tails=len(names) <= BULK_EXIT_LOOKUP)
        for name in names:
            info = infos.get(name)
            if info is not None and info.get("statename") in ("EXITED", "STOPPED"):
                self.state.set_exit_status(name, int(info.get("exitstatus") or 0))
                continue
            status, _ = from_log(name)
            if status is not None:
                self.state.set_exit_status(name, status)

    def _classify(
        self,
        unexpected: dict[str, bool | None],
        infos: Mapping[str, Any],
        from_log: Callable[[str], tuple[int | None, str]],
        *,
        tails: bool,
    ) -> None:
        """Count each unexpected exit under its reason (status, stderr tail, OOM counter)."""
        for name, oom in unexpected.items():
            info = infos.get(name) or {}
            signal: str | None = None
            if info.get("statename") == "EXITED":
                status: int | None = int(info.get("exitstatus") or 0)
            else:
                # respawned, or stopped by health since: supervisord reset the status, and its
                # log's exit line has it (a crash-looping worker read "exit status unknown")
                status, how = from_log(name)
                if how.startswith("terminated by "):
                    signal = how.removeprefix("terminated by ").split(" ")[0]
            tail = None
            if tails:
                try:
                    tail = self.rpc.tail_stderr(name, 4096)
                except SupervisorError:
                    tail = None
            reason = classify(status, signal=signal, stderr_tail=tail, oom_kill=bool(oom))
            self.state.count_exit(name, reason)


# --------------------------------------------------------------------------- page


#: A short timeout and a bounded length for the stderr tail a page view fetches.
TAIL_TIMEOUT = 3.0
TAIL_BYTES = 4096


class PageTasks:
    """supervisor-tasks' enable/disable for the status page (``actions.TaskControl``)."""

    def __init__(self, conf: Path, client: SupervisorRPC) -> None:
        self.conf = conf
        self.client = client

    def _layout(self) -> Layout:
        from listeners.taskfiles.layout import load_layout

        return load_layout(self.conf)

    def names(self) -> list[tuple[str, bool, str]]:
        from listeners.taskfiles.files import discover
        from listeners.taskfiles.layout import ConfError

        try:
            return [
                (t.name, t.enabled, "; ".join(str(p) for p in t.problems) if t.broken else "")
                for t in discover(self._layout())
            ]
        except (ConfError, OSError) as exc:
            log.warning("exporter.tasks_unreadable", conf=str(self.conf), error=str(exc))
            return []

    def toggle(self, name: str, enable: bool) -> tuple[bool, str]:
        from listeners.taskfiles.layout import ConfError
        from listeners.taskfiles.toggle import EXIT_OK, Toggle

        lines: list[str] = []
        try:
            toggle = Toggle(self._layout(), self.client, say=lines.append, warn=lines.append)
            outcome = toggle.run([name], enable)
        except (ConfError, OSError) as exc:
            return False, str(exc)
        return outcome.code == EXIT_OK, "; ".join(lines)


def build_site(
    config: Config, web_config: WebConfig, state: ExporterState, reader: ProcReader, me: str | None
) -> Site:
    """The status page's routes, with actions only when the web config names operators."""
    from listeners.metrics.actions import Actions
    from listeners.metrics.routes import Site

    tail_rpc = Supervisor(dataclasses.replace(config.connection, timeout=TAIL_TIMEOUT))
    actions = None
    if web_config.users and web_config.operators:
        actions = Actions(
            Supervisor(config.connection),
            operators=web_config.operators,
            auth=True,
            tls=web_config.tls is not None,
            history=state.history,
            self_name=me,
            tasks=PageTasks(config.tasks_conf, Supervisor(config.connection))
            if config.tasks_conf
            else None,
        )
    return Site(
        state=state,
        reader=reader,
        dashboard_url=config.dashboard_url,
        history=state.history,
        actions=actions,
        tail=lambda name: tail_rpc.tail_stderr(name, TAIL_BYTES),
        grafana_url=config.grafana_url,
    )


def sample_memory(state: ExporterState, reader: ProcReader, stop: threading.Event) -> None:
    """Feed the page's memory chart: one /proc read of every process per history step."""
    from listeners.metrics.proc import sample

    while not stop.wait(state.history.step):
        try:
            _snap, usages = sample(state, reader, refresh=True)
        except Exception:  # a bad /proc read must not end the sampling thread
            log.exception("exporter.history_sample_failed")
            continue
        # the chart draws memmon's ceiling: plot what memmon compares with it
        state.history.add_samples(
            {
                k: u.memory_bytes if u.judged_bytes is None else u.judged_bytes
                for k, u in usages.items()
            }
        )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure(config.log_level)
    from listeners.metrics import web as exporter_web

    try:
        web_config = exporter_web.load_web_config(config.web_config_file)
    except ValueError as exc:
        build_parser().error(str(exc))
    # The exporter lists itself like any process (it never acts on itself: see actions).
    me = self_name()
    state = ExporterState(loop=config.loop, history=History(step=config.history_step))
    reader = ProcReader()
    site = build_site(config, web_config, state, reader, me)
    try:
        server = exporter_web.make_server(
            config.listen_host,
            config.listen_port,
            state=state,
            reader=reader,
            web_config=web_config,
            dashboard_url=config.dashboard_url,
            site=site,
        )
    except OSError as exc:
        log.error(
            "exporter.listen_failed",
            address=f"{config.listen_host}:{config.listen_port}",
            error=exc.strerror or str(exc),
        )
        return 1
    oom_files = oom_paths()
    handler = ExporterHandler(
        state,
        Supervisor(config.connection),
        Worker("exporter-rpc"),
        reconcile_interval=config.reconcile_interval,
        oom=OomWatch(lambda: read_oom_kills(oom_files)),
    )
    handler.request_reconcile()
    thread = threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    stop_sampling = threading.Event()
    threading.Thread(
        target=sample_memory,
        args=(state, reader, stop_sampling),
        name="exporter-history",
        daemon=True,
    ).start()
    log.info(
        "exporter.listening",
        address=f"{config.listen_host}:{server.server_address[1]}",
        tls=web_config.tls is not None,
        basic_auth=bool(web_config.users),
    )
    try:
        return protocol.run(handler)
    finally:
        stop_sampling.set()
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
