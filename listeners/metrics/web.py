"""The exporter's HTTP side: /metrics, /healthz, the status page, TLS and basic auth.

A thread per connection with a socket timeout, a cap on connections and on request size:
a slow or abusive client holds one thread until its timeout, never the other scrapes.
TLS handshakes run in the connection's thread too, so a client that stalls mid-handshake
cannot block accept(). The web config file has the exporter-toolkit format that Prometheus
exporters share (``tls_server_config``, ``basic_auth_users`` with bcrypt hashes).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from listeners.core.log import get_logger
from listeners.metrics import routes
from listeners.metrics.proc import ProcReader, sample
from listeners.metrics.render import Renderer
from listeners.metrics.snapshot import Snapshot, SnapshotSource, Usage

__all__ = ["WebConfig", "load_web_config", "make_server"]

log = get_logger("listeners.exporter.web")

MAX_REQUEST_LINE = 4096
MAX_HEADER_BYTES = 16384
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT = 10.0
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    #: basic_auth_users names allowed to act from the status page; everyone else views.
    operators: frozenset[str] = frozenset()


def load_web_config(path: Path | None) -> WebConfig:
    """Read an exporter-toolkit web config; ValueError names the file and the problem."""
    if path is None:
        return WebConfig()
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read web config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"web config {path} is not valid YAML: {exc}") from None
    if raw is None:
        return WebConfig()
    if not isinstance(raw, dict):
        raise ValueError(f"web config {path} must be a mapping")  # noqa: TRY004 - user input
    unknown = set(raw) - {
        "tls_server_config",
        "basic_auth_users",
        "http_server_config",
        "operators",
    }
    if unknown:
        raise ValueError(
            f"web config {path} has unsupported keys {sorted(unknown)}; supported:"
            " tls_server_config, basic_auth_users, operators"
        )
    tls = _tls_context(path, raw.get("tls_server_config"))
    users_raw = raw.get("basic_auth_users") or {}
    if not isinstance(users_raw, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"web config {path}: basic_auth_users must map user names to hashes"
        )
    users: dict[str, bytes] = {}
    for user, hashed in users_raw.items():
        if not isinstance(hashed, str) or not hashed.startswith("$2"):
            raise ValueError(
                f"web config {path}: the password of user {user!r} must be a bcrypt hash"
                " ($2a$/$2b$/$2y$...), e.g. from htpasswd -nBC 10 '' | tr -d ':\\n'"
            )
        users[str(user)] = hashed.encode()
    return WebConfig(tls=tls, users=users, operators=_operators(path, raw.get("operators"), users))


def _operators(path: Path, raw: Any, users: dict[str, bytes]) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise ValueError(
            f"web config {path}: operators must be a list of basic_auth_users names,"
            " e.g. operators: [alice]"
        )
    missing = [u for u in raw if u not in users]
    if missing:
        raise ValueError(
            f"web config {path}: operators {missing} are not in basic_auth_users;"
            " add them there (with a bcrypt hash) or remove them from operators"
        )
    return frozenset(raw)


def _tls_context(path: Path, conf: Any) -> ssl.SSLContext | None:
    if not conf:
        return None
    if not isinstance(conf, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"web config {path}: tls_server_config must be a mapping"
        )
    unknown = set(conf) - {"cert_file", "key_file", "min_version"}
    if unknown:
        raise ValueError(
            f"web config {path}: unsupported tls_server_config keys {sorted(unknown)};"
            " supported: cert_file, key_file, min_version"
        )
    if not conf.get("cert_file") or not conf.get("key_file"):
        raise ValueError(f"web config {path}: tls_server_config needs cert_file and key_file")
    # exporter-toolkit resolves relative paths against the config file's directory.
    cert = path.parent / str(conf["cert_file"])
    key = path.parent / str(conf["key_file"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = str(conf.get("min_version", "TLS12"))
    if version not in TLS_VERSIONS:
        raise ValueError(f"web config {path}: min_version {version!r} is not TLS12 or TLS13")
    ctx.minimum_version = TLS_VERSIONS[version]
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"web config {path}: cannot load {cert} / {key}: {exc}") from None
    return ctx


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        state: SnapshotSource,
        reader: ProcReader,
        web_config: WebConfig,
        dashboard_url: str,
        site: routes.Site | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.reader = reader
        self.web_config = web_config
        self.dashboard_url = dashboard_url
        self.site = site or routes.Site(state=state, reader=reader, dashboard_url=dashboard_url)
        self.renderer = Renderer()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.auth_cache: dict[tuple[str, bytes], bool] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("exporter.too_many_connections", client=str(client_address[0]))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SOCKET_TIMEOUT)
        tls = self.web_config.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.info("exporter.tls_handshake_failed", client=str(client_address[0]), error=str(exc))
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that hung up is not news.
        log.info("exporter.request_failed", client=str(client_address[0]), exc_info=True)

    def check_auth(self, header: str | None) -> bool:
        users = self.web_config.users
        if not users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = users.get(user)
        if hashed is None:
            return False
        # bcrypt costs ~50 ms by design; remember passwords already checked (by digest only).
        key = (user, hashlib.sha256(password.encode()).digest())
        if self.auth_cache.get(key):
            return True
        import bcrypt

        ok = bcrypt.checkpw(password.encode(), hashed)
        if ok:
            if len(self.auth_cache) > 1000:
                self.auth_cache.clear()
            self.auth_cache[key] = True
        return ok


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    raw_requestline: bytes
    server_version = "supervisor-exporter"
    # Answer garbage with a real status line, not an HTTP/0.9 headerless body.
    default_request_version = "HTTP/1.0"
    sys_version = ""

    def parse_request(self) -> bool:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = ""
            self.request_version = "HTTP/1.0"
            self.command = ""
            self.send_error(414)
            return False
        if not super().parse_request():
            return False
        size = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > MAX_HEADER_BYTES:
            self.send_error(431)
            return False
        if self.command not in ("GET", "HEAD", "POST"):
            self.send_error(405)
            return False
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.send_error(413, "requests to the exporter carry no chunked body")
            return False
        if self.command == "POST":
            # Only the status page's action forms: small, with a length.
            if not length or not length.strip().isdigit():
                self.send_error(411)
                return False
            if int(length) > routes.MAX_FORM_BYTES:
                self.send_error(413, "an action form is a few hundred bytes")
                return False
        elif length and length.strip() != "0":
            self.send_error(413, "requests to the exporter carry no body")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Unknown methods would get 501 from http.server; everything we refuse is the client's.
        if code == 501:
            code = 405
        self.close_connection = True
        super().send_error(code, message, explain)

    def end_headers(self) -> None:
        if getattr(self, "_status", 0) == 405:
            allow = "POST" if self.path.partition("?")[0] == "/action" else "GET, HEAD"
            self.send_header("Allow", allow)
        super().end_headers()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("exporter.http", client=self.client_address[0], message=format % args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _authenticated(self) -> bool:
        if self.server.check_auth(self.headers.get("Authorization")):
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="supervisor-exporter"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _user(self) -> str | None:
        if not self.server.web_config.users:
            return None
        return routes.basic_user(self.headers.get("Authorization"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not self._authenticated():
            return
        path = self.path.partition("?")[0]
        headers = {k.title(): v for k, v in self.headers.items()}  # Origin, Host, Referer
        answer = routes.handle_post(self.server.site, path, self._user(), headers, body)
        self._answer(answer)

    def do_GET(self) -> None:
        if not self._authenticated():
            return
        path = self.path.partition("?")[0]
        if path == "/metrics":
            started = time.perf_counter()
            snap, usages = self._sample()
            body = self.server.renderer.render(snap, usages, started).encode()
            self._reply(200, CONTENT_TYPE_METRICS, body)
        elif path == "/healthz":
            self._reply(200, "text/plain; charset=utf-8", b"ok\n")
        elif (answer := routes.handle_get(self.server.site, path, self._user())) is not None:
            self._answer(answer)
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /\n")

    def _answer(self, answer: routes.Response) -> None:
        self._reply(answer.code, answer.content_type, answer.body, answer.headers)

    def _sample(self) -> tuple[Snapshot, dict[str, Usage]]:
        return sample(self.server.state, self.server.reader)

    def _reply(
        self, code: int, content_type: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", routes.CSP)
        self.send_header("Referrer-Policy", "same-origin")
        if not any(k == "Cache-Control" for k, _ in headers):
            self.send_header("Cache-Control", "no-store")
        for key, val in headers:
            self.send_header(key, val)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(
    host: str,
    port: int,
    *,
    state: SnapshotSource,
    reader: ProcReader,
    web_config: WebConfig,
    dashboard_url: str,
    site: routes.Site | None = None,
) -> ThreadingHTTPServer:
    """Bind (raises OSError); the caller runs ``serve_forever`` on a thread."""
    return _Server(
        (host, port),
        state=state,
        reader=reader,
        web_config=web_config,
        dashboard_url=dashboard_url,
        site=site,
    )
