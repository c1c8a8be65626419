"""supervisor-exporter: Prometheus metrics and a status page, fed by supervisord's events.

It runs as an event listener, so it sees every transition (a polling exporter misses what
happens between scrapes), and serves HTTP from a thread of the same process. State comes
from PROCESS_STATE / PROCESS_GROUP events, one getAllProcessInfo at start and a reconcile on
TICK_60 (or every ``--reconcile-interval``), always on a background thread. A scrape makes no
XML-RPC call: it copies the state under a lock and reads /proc for memory and CPU.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from listeners.core import bus, cli, protocol
from listeners.core.background import Worker
from listeners.core.crashloop import DEFAULT_LOOP
from listeners.core.log import configure, get_logger
from listeners.core.supervisor import Connection, Supervisor, SupervisorError, self_name
from listeners.core.units import parse_duration, parse_rate
from listeners.metrics.proc import ProcReader
from listeners.metrics.state import ExporterState
from listeners.notify.enrich import exit_from_log

__all__ = ["Config", "ExporterHandler", "ExporterState", "main", "parse_args"]


log = get_logger("listeners.exporter")

DEFAULT_LISTEN = "127.0.0.1:9876"
DEFAULT_DASHBOARD = "http://127.0.0.1:8080/"
#: Above this many exits waiting for their status, one getAllProcessInfo is cheaper.
BULK_EXIT_LOOKUP = 16


class RPC(Protocol):
    """The part of ``Supervisor`` the exporter uses; tests pass a fake."""

    def version(self) -> str: ...
    def identification(self) -> str: ...
    def all_process_info(self) -> list[dict[str, Any]]: ...
    def process_info(self, name: str) -> dict[str, Any]: ...
    def call(self, method: str, *args: Any) -> Any: ...


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


def parse_interval(text: str) -> float:
    value = parse_duration(text)
    if value < 0.1:
        raise ValueError(f"invalid interval {text!r}: must be at least 0.1s")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return Config(
        connection=connection,
        listen_host=host,
        listen_port=port,
        web_config_file=web_config,
        dashboard_url=args.dashboard_url,
        loop=loop,
        reconcile_interval=args.reconcile_interval,
        log_level=args.log_level,
    )


# --------------------------------------------------------------------------- events


class ExporterHandler(protocol.Handler):
    """Feeds events into the state; RPC (reconcile, exit statuses) goes to ``worker``."""

    def __init__(
        self,
        state: ExporterState,
        rpc: RPC,
        worker: Worker,
        *,
        reconcile_interval: float | None = None,
    ) -> None:
        self.state = state
        self.rpc = rpc
        self.worker = worker
        self.timer_interval = reconcile_interval
        self._pending_lock = threading.Lock()
        self._reconcile_pending = False
        self._exits: set[str] = set()

    # The event loop side: cheap, never blocks.

    def handle(self, event: protocol.Event) -> None:
        self.state.count_event()
        if isinstance(event, protocol.ProcessStateEvent):
            self.state.apply_process(event)
            if event.state in ("EXITED", "BACKOFF") and event.full_name not in self.state.ignore:
                self.request_exit_status(event.full_name)
        elif isinstance(event, protocol.ProcessGroupEvent):
            self.state.apply_group(event)
            if event.added:
                self.request_reconcile()
        elif isinstance(event, protocol.TickEvent):
            if event.period == 60 and self.timer_interval is None:
                self.request_reconcile()
        elif isinstance(event, protocol.RemoteCommunicationEvent):
            if event.type in (bus.MEMMON_TYPE, bus.CRASHMAIL_TYPE):
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
                self.request_reconcile()

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        self.state.add_lost(count)
        self.request_reconcile()

    def on_timer(self) -> None:
        self.request_reconcile()

    def close(self) -> None:
        self.worker.close(timeout=5.0)

    def request_reconcile(self) -> None:
        with self._pending_lock:
            if self._reconcile_pending:
                return
            self._reconcile_pending = True
        self.worker.submit(self.reconcile)

    def request_exit_status(self, name: str) -> None:
        with self._pending_lock:
            first = not self._exits
            self._exits.add(name)
        if first:
            self.worker.submit(self.fetch_exit_statuses)

    # The worker side: RPC calls.

    def reconcile(self) -> None:
        with self._pending_lock:
            self._reconcile_pending = False
        started = time.monotonic()
        try:
            version = self.rpc.version()
            identification = self.rpc.identification()
            infos = self.rpc.all_process_info()
        except SupervisorError as exc:
            self.state.reconcile_failed()
            log.warning("exporter.reconcile_failed", error=str(exc))
            return
        self.state.apply_reconcile(infos, version, identification)
        log.debug(
            "exporter.reconciled",
            processes=len(infos),
            seconds=round(time.monotonic() - started, 4),
        )

    def fetch_exit_statuses(self) -> None:
        # supervisord's events do not carry the exit code; getProcessInfo does.
        with self._pending_lock:
            names, self._exits = self._exits, set()
        try:
            if len(names) > BULK_EXIT_LOOKUP:
                infos: Mapping[str, dict[str, Any]] = {
                    f"{i['group']}:{i['name']}": i for i in self.rpc.all_process_info()
                }
            else:
                infos = {n: self.rpc.process_info(n) for n in names}
        except SupervisorError as exc:
            log.info("exporter.exit_status_unavailable", error=str(exc))
            return
        log_text: str | None = None
        for name in names:
            info = infos.get(name)
            if info is not None and info.get("statename") in ("EXITED", "STOPPED"):
                self.state.set_exit_status(name, int(info.get("exitstatus") or 0))
                continue
            # Respawned already, or a start that failed before startsecs (BACKOFF/FATAL):
            # supervisord reports 0 there; its own log's "exited: NAME (exit status N" has it.
            if log_text is None:
                try:
                    log_text = str(self.rpc.call("supervisor.readLog", -EXIT_LOG_BYTES, 0))
                except SupervisorError as exc:
                    log.info("exporter.exit_status_unavailable", error=str(exc))
                    log_text = ""
            status, _ = exit_from_log(log_text, name.partition(":")[2])
            if status is not None:
                self.state.set_exit_status(name, status)


#: How much of supervisord's own log is read to find an exit status it no longer reports.
EXIT_LOG_BYTES = 65536


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure(config.log_level)
    from listeners.metrics import web as exporter_web

    try:
        web_config = exporter_web.load_web_config(config.web_config_file)
    except ValueError as exc:
        build_parser().error(str(exc))
    me = self_name()
    state = ExporterState(loop=config.loop, ignore=[me] if me else [])
    reader = ProcReader()
    try:
        server = exporter_web.make_server(
            config.listen_host,
            config.listen_port,
            state=state,
            reader=reader,
            web_config=web_config,
            dashboard_url=config.dashboard_url,
        )
    except OSError as exc:
        log.error(
            "exporter.listen_failed",
            address=f"{config.listen_host}:{config.listen_port}",
            error=exc.strerror or str(exc),
        )
        return 1
    handler = ExporterHandler(
        state,
        Supervisor(config.connection),
        Worker("exporter-rpc"),
        reconcile_interval=config.reconcile_interval,
    )
    handler.request_reconcile()
    thread = threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    log.info(
        "exporter.listening",
        address=f"{config.listen_host}:{server.server_address[1]}",
        tls=web_config.tls is not None,
        basic_auth=bool(web_config.users),
    )
    try:
        return protocol.run(handler)
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
