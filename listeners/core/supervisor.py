"""XML-RPC client for supervisord, and the process helpers the listeners share.

supervisord is single-threaded: while it answers a call it dispatches no events and serves no
dashboard. Listeners therefore call it rarely (once at start, a reconcile now and then, and
when they act) and never from the event loop itself (see background.py).

The transport is written here rather than imported from ``supervisor.xmlrpc`` because that
module pulls in most of supervisord (measured in bench/memmon.py) and has no timeouts.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import threading
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from listeners.core.names import full_name

__all__ = [
    "DEFAULT_URL",
    "Connection",
    "RPCFault",
    "ReplyUnreadable",
    "Supervisor",
    "SupervisorError",
    "SupervisorRPC",
    "full_name",
    "read_main_log",
    "self_name",
]

DEFAULT_URL = "unix:///var/run/supervisor.sock"

# Fault codes from supervisor/xmlrpc.py (class Faults); repeated so we need not import it.
BAD_NAME = 10
NO_FILE = 40
NOT_RUNNING = 70
ALREADY_STARTED = 60
ALREADY_ADDED = 90


class SupervisorError(Exception):
    """supervisord could not be reached or refused us; the message says what to do."""


class ReplyUnreadable(SupervisorError):  # noqa: N818 - reads as what happened
    """supervisord's answer is not XML-RPC: another server at the address, or a reply with
    bytes XML forbids (a log tail with ANSI colours: supervisord does not escape them)."""


class RPCFault(SupervisorError):  # noqa: N818 - mirrors xmlrpc.client.Fault
    """supervisord answered with an XML-RPC fault (BAD_NAME, NOT_RUNNING, ...)."""

    def __init__(self, code: int, text: str, method: str) -> None:
        super().__init__(f"supervisord answered {method} with fault {code} {text}")
        self.code = code
        self.text = text
        self.method = method


def self_name(env: Mapping[str, str] | None = None) -> str | None:
    """``group:name`` of this listener as supervisord started it, so it never acts on itself."""
    env = os.environ if env is None else env
    name = env.get("SUPERVISOR_PROCESS_NAME")
    if not name:
        return None
    return full_name(env.get("SUPERVISOR_GROUP_NAME", name), name)


class SupervisorRPC(Protocol):
    """What the tools and wings ask of supervisord: ``Supervisor`` has it all, and unit tests
    pass ``tests.fakes.FakeSupervisor`` instead. One list, so a fake is checked against one."""

    @property
    def url(self) -> str: ...
    def call(self, method: str, *args: Any) -> Any: ...
    def state(self) -> str: ...
    def version(self) -> str: ...
    def identification(self) -> str: ...
    def all_process_info(self) -> list[dict[str, Any]]: ...
    def process_info(self, name: str) -> dict[str, Any]: ...
    def tail_stderr(self, name: str, length: int = 4096) -> str | None: ...
    def start(self, name: str, *, wait: bool = False) -> bool: ...
    def stop(self, name: str, *, wait: bool = False) -> bool: ...
    def signal(self, name: str, signal: str | int) -> bool: ...
    def send_remote_comm(self, type_: str, data: str) -> None: ...
    def stop_group(self, group: str, *, wait: bool = True) -> None: ...
    def update(self, only: Iterable[str] | None = None) -> dict[str, list[str]]: ...


def read_main_log(rpc: SupervisorRPC, size: int = 65536) -> str:
    """The last ``size`` bytes of supervisord's own log; "" when it cannot be had.

    Used for the ``exited: NAME (exit status N)`` lines (``core.exits.exit_from_log``).
    """
    try:
        return str(rpc.call("supervisor.readLog", -size, 0))
    except Exception:  # SupervisorError, or a reply the XML parser rejects
        return ""


@dataclass(frozen=True)
class Connection:
    """Where supervisord is and how to log in. The password never comes from a flag."""

    url: str = DEFAULT_URL
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        username: str | None = None,
        password_file: str | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        """Flags first, then what supervisord gives its children, then the default socket.

        supervisord sets SUPERVISOR_SERVER_URL for its children but never the credentials:
        where auth is on, pass SUPERVISOR_USERNAME/SUPERVISOR_PASSWORD with ``environment=``.
        """
        env = os.environ if env is None else env
        password = env.get("SUPERVISOR_PASSWORD") or None
        if password_file:
            try:
                with open(password_file, encoding="utf-8") as fh:
                    password = fh.read().strip()
            except OSError as exc:
                raise SupervisorError(
                    f"cannot read the supervisord password file {password_file}: {exc.strerror}"
                ) from None
        conn = cls(
            url=url or env.get("SUPERVISOR_SERVER_URL") or DEFAULT_URL,
            username=username or env.get("SUPERVISOR_USERNAME") or None,
            password=password,
            timeout=timeout,
        )
        conn.check()
        return conn

    def check(self) -> None:
        """Raise ValueError naming the URL when it is not unix:// or http://."""
        if self.url.startswith("unix://"):
            if len(self.url) <= len("unix://"):
                raise ValueError(f"invalid supervisord URL {self.url!r}: no socket path")
            return
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"invalid supervisord URL {self.url!r}: expected unix:///path/to/supervisor.sock"
                " or http://host:port"
            )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(xmlrpc.client.Transport):
    """unix:// or http:// with basic auth and a timeout on every call."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        if conn.username is not None and conn.password is not None:
            token = base64.b64encode(f"{conn.username}:{conn.password}".encode()).decode()
            self._extra_headers = [("Authorization", f"Basic {token}")]

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection[1] is not None and self._connection[0] == host:
            return self._connection[1]
        if self._conn.url.startswith("unix://"):
            connection: http.client.HTTPConnection = _UnixConnection(
                self._conn.url[len("unix://") :], self._conn.timeout
            )
        else:
            parts = urlsplit(self._conn.url)
            connection = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port or 80, timeout=self._conn.timeout
            )
        self._connection = host, connection
        return connection


class Supervisor:
    """A thread-safe supervisord client: one XML-RPC proxy per thread, errors made readable."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._local = threading.local()

    @property
    def url(self) -> str:
        return self.connection.url

    def _proxy(self) -> Any:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            # The host part is ignored for unix:// (the transport knows the socket).
            uri = "http://127.0.0.1" if self.url.startswith("unix://") else self.url
            proxy = xmlrpc.client.ServerProxy(
                uri.rstrip("/") + "/RPC2", transport=_Transport(self.connection), allow_none=True
            )
            self._local.proxy = proxy
        return proxy

    def close(self) -> None:
        proxy = getattr(self._local, "proxy", None)
        if proxy is not None:
            proxy("close")()
            self._local.proxy = None

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` (e.g. ``supervisor.getState``); raises SupervisorError with advice."""
        func = self._proxy()
        for part in method.split("."):
            func = getattr(func, part)
        try:
            return func(*args)
        except xmlrpc.client.Fault as fault:
            raise RPCFault(fault.faultCode, fault.faultString, method) from None
        except xmlrpc.client.ProtocolError as exc:
            self._local.proxy = None
            if exc.errcode == 401:
                raise SupervisorError(
                    f"supervisord at {self.url} refused the credentials (HTTP 401): set"
                    " SUPERVISOR_USERNAME and SUPERVISOR_PASSWORD (or a password file) to the"
                    " [unix_http_server]/[inet_http_server] username and password"
                ) from None
            raise SupervisorError(
                f"supervisord at {self.url} answered HTTP {exc.errcode} {exc.errmsg}"
            ) from None
        except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as exc:
            self._local.proxy = None
            raise ReplyUnreadable(
                f"the answer of {self.url} to {method} is not XML-RPC ({type(exc).__name__}:"
                f" {exc}); is this supervisord's [unix_http_server] or [inet_http_server]"
                " address?"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._local.proxy = None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SupervisorError(
                f"cannot reach supervisord at {self.url}: {reason or type(exc).__name__}; is it"
                " running, and is this the address in its [unix_http_server] or"
                " [inet_http_server] section?"
            ) from None

    # ------------------------------------------------------------------ reading

    def state(self) -> str:
        return str(self.call("supervisor.getState")["statename"])

    def version(self) -> str:
        return str(self.call("supervisor.getSupervisorVersion"))

    def identification(self) -> str:
        return str(self.call("supervisor.getIdentification"))

    def all_process_info(self) -> list[dict[str, Any]]:
        return list(self.call("supervisor.getAllProcessInfo"))

    def process_info(self, name: str) -> dict[str, Any]:
        return dict(self.call("supervisor.getProcessInfo", name))

    def tail_stderr(self, name: str, length: int = 4096) -> str | None:
        """The last ``length`` bytes of a process's stderr log; None when there is nothing.

        supervisord answers NO_FILE for a log it cannot seek (``/dev/stderr``) but ``['', 0,
        False]`` for a program with no log file at all (``stderr_logfile=NONE``); an empty
        existing log looks the same. ``stderr_logfile`` in getProcessInfo tells them apart.
        """
        try:
            text, offset, _overflow = self.call("supervisor.tailProcessStderrLog", name, 0, length)
        except RPCFault as fault:
            if fault.code == NO_FILE:
                return None
            raise
        if not text and not offset:
            return None
        return str(text)

    # ------------------------------------------------------------------ acting

    def start(self, name: str, *, wait: bool = False) -> bool:
        """Start a process; an already started one is fine."""
        try:
            return bool(self.call("supervisor.startProcess", name, wait))
        except RPCFault as fault:
            if fault.code == ALREADY_STARTED:
                return True
            raise

    def stop(self, name: str, *, wait: bool = False) -> bool:
        """Stop a process; one that is not running is fine (returns False)."""
        try:
            return bool(self.call("supervisor.stopProcess", name, wait))
        except RPCFault as fault:
            if fault.code == NOT_RUNNING:
                return False
            raise

    def signal(self, name: str, signal: str | int) -> bool:
        return bool(self.call("supervisor.signalProcess", name, str(signal)))

    def send_remote_comm(self, type_: str, data: str) -> None:
        """Publish on supervisord's bus: every REMOTE_COMMUNICATION listener receives it."""
        self.call("supervisor.sendRemoteCommEvent", type_, data)

    # ------------------------------------------------------------------ groups

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the conf files (``supervisorctl reread``): (added, changed, removed)."""
        result = self.call("supervisor.reloadConfig")
        added, changed, removed = result[0]
        return list(added), list(changed), list(removed)

    def stop_group(self, group: str, *, wait: bool = True) -> None:
        self.call("supervisor.stopProcessGroup", group, wait)

    def remove_group(self, group: str) -> None:
        self.call("supervisor.removeProcessGroup", group)

    def add_group(self, group: str) -> None:
        try:
            self.call("supervisor.addProcessGroup", group)
        except RPCFault as fault:
            if fault.code != ALREADY_ADDED:
                raise

    def update(self, only: Iterable[str] | None = None) -> dict[str, list[str]]:
        """What ``supervisorctl update [group...]`` does, limited to ``only`` when given.

        Removed groups are stopped and removed, changed ones stopped, removed and added
        again, added ones added. Other groups are not touched.
        """
        wanted = None if only is None else set(only)
        added, changed, removed = self.reload_config()

        def pick(groups: list[str]) -> list[str]:
            return [g for g in groups if wanted is None or g in wanted]

        done: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        for group in pick(removed):
            self.stop_group(group)
            self.remove_group(group)
            done["removed"].append(group)
        for group in pick(changed):
            self.stop_group(group)
            self.remove_group(group)
            self.add_group(group)
            done["changed"].append(group)
        for group in pick(added):
            self.add_group(group)
            done["added"].append(group)
        return done
