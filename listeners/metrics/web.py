"""The exporter's HTTP side: /metrics, /healthz, the status page, TLS and basic auth.

A connection goes through two stages, each with its own cap:

1. *reception*: the TLS handshake and the request line plus headers must arrive within
   ``HEADER_DEADLINE`` seconds in total (not per byte), or the connection is closed. At most
   ``MAX_PENDING`` connections wait here; when one more arrives, the oldest waiting one is
   dropped, so clients that trickle bytes (slowloris) can never fill the server.
2. *service*: only a complete request takes one of ``MAX_CONNECTIONS`` slots; when all are
   busy it gets 503 at once.

Refusals are logged at most once per ``REFUSAL_LOG_INTERVAL`` with a count of the ones not
logged. The web config file (``webconfig``) has the exporter-toolkit format that Prometheus
exporters share.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from listeners.core import log as core_log
from listeners.core.log import get_logger
from listeners.metrics import routes
from listeners.metrics.proc import ProcReader, sample
from listeners.metrics.render import Renderer
from listeners.metrics.snapshot import Snapshot, SnapshotSource, Usage
from listeners.metrics.webconfig import AuthBusyError, BasicAuth, WebConfig, load_web_config

__all__ = ["RateLimitedLog", "WebConfig", "load_web_config", "make_server"]

log = get_logger("listeners.exporter.web")

MAX_REQUEST_LINE = 4096
MAX_HEADER_BYTES = 16384
# What reception reads at most: a request line, its headers and the blank line.
MAX_HEAD_BYTES = MAX_REQUEST_LINE + MAX_HEADER_BYTES + 4
MAX_CONNECTIONS = 64
MAX_PENDING = 256
HEADER_DEADLINE = 5.0
SOCKET_TIMEOUT = 10.0
#: Seconds to write a whole answer: a client that reads it slowly (a byte now and then, within
#: every per-write timeout) holds its slot no longer than this.
ANSWER_DEADLINE = 15.0
REFUSAL_LOG_INTERVAL = 10.0
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
#: Sent on every answer, errors and 503 included, unless the answer (or the web config's
#: ``http_server_config.headers``) sets the header itself.
DEFAULT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", routes.CSP),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


class RateLimitedLog(core_log.RateLimitedLog):
    """core's rate-limited log line, a warning of the exporter's web logger by default."""

    def __init__(
        self,
        event: str,
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(event, emit or log.warning, interval, clock)


class _Reception:
    """The connections still sending their request head, oldest first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._waiting: OrderedDict[int, socket.socket] = OrderedDict()

    def enter(self, key: int, sock: socket.socket) -> socket.socket | None:
        """Register ``sock``; returns the oldest one to drop when over the cap."""
        with self._lock:
            self._waiting[key] = sock
            if len(self._waiting) > self.cap:
                return self._waiting.popitem(last=False)[1]
        return None

    def update(self, key: int, sock: socket.socket) -> bool:
        """The socket object changed (TLS wrap); False when it was dropped meanwhile."""
        with self._lock:
            if key not in self._waiting:
                return False
            self._waiting[key] = sock
            return True

    def leave(self, key: int) -> bool:
        """True when ``key`` was still waiting (not dropped)."""
        with self._lock:
            return self._waiting.pop(key, None) is not None


def _drop(sock: socket.socket) -> None:
    # shutdown wakes the thread blocked in recv on this socket; it then closes it
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d{1,9})[ \t]*\r?$", re.I | re.M)


def _head_end(data: bytes | bytearray) -> int:
    """Where the blank line that ends the head ends (LF, CRLF or the two mixed); -1 if none."""
    ends = [i + n for i, n in ((data.find(b"\n\r\n"), 3), (data.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def _read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bool] | None:
    """The request line, headers and a form's body; None when the head does not all arrive
    before ``deadline``. The flag is False when the head came but not the body it announced.

    The body is read here, before the request takes one of the handler slots: a client that
    sends a head and then trickles its body would otherwise hold a slot per connection, and
    64 of them would lock every scraper out. Stops at ``MAX_HEAD_BYTES`` (the handler then
    refuses the request) and never reads more body than a form may have (the handler
    refuses a longer one from its Content-Length).
    """
    data = bytearray()
    want = -1  # the request's whole length, once the head is in
    while True:
        if want < 0:
            end = _head_end(data)
            if end >= 0:
                declared = _CONTENT_LENGTH.search(bytes(data[:end]))
                body = int(declared[1]) if declared else 0
                want = end + (body if body <= routes.MAX_FORM_BYTES else 0)
            elif len(data) >= MAX_HEAD_BYTES:
                return bytes(data), True
        if 0 <= want <= len(data):
            return bytes(data), True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return (bytes(data), False) if want >= 0 else None
        sock.settimeout(remaining)
        try:
            room = (want if want >= 0 else MAX_HEAD_BYTES) - len(data)
            chunk = sock.recv(max(1, room))
        except OSError:  # ssl.SSLError is an OSError
            return (bytes(data), False) if want >= 0 else None
        if not chunk:
            return (bytes(data), False) if want >= 0 else None
        data += chunk


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
        self.reception = _Reception(MAX_PENDING)
        self.auth = BasicAuth(web_config.users)
        self.extra_headers = dict(web_config.headers)
        self.log_busy = RateLimitedLog("exporter.too_many_connections")
        self.log_dropped = RateLimitedLog("exporter.slow_client_dropped")
        self.log_auth_busy = RateLimitedLog("exporter.too_many_password_checks")
        # per-connection troubles: a scanner or a plain-HTTP client on a TLS port makes one
        # per connection, so they are logged once per interval with how many were skipped
        self.log_handshake = RateLimitedLog("exporter.tls_handshake_failed", emit=log.info)
        self.log_request = RateLimitedLog("exporter.request_failed", emit=log.info)
        self.header_deadline = HEADER_DEADLINE
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        key = id(request)
        deadline = time.monotonic() + self.header_deadline
        oldest = self.reception.enter(key, request)
        if oldest is not None:
            self.log_dropped(client=client, reason="too many connections still sending headers")
            _drop(oldest)
        try:
            sock = self._receive(request, client, key, deadline)
            got = None if sock is None else _read_head(sock, deadline)
        finally:
            waited = self.reception.leave(key)
        if sock is None:
            return
        try:
            if got is None or not waited:
                log.debug("exporter.incomplete_request", client=client)
                return
            head, whole = got
            if not whole:
                log.debug("exporter.incomplete_body", client=client)
                self._refuse(sock, b"408 Request Timeout", b"the request body did not arrive\n")
                return
            if not self.slots.acquire(blocking=False):
                self.log_busy(client=client)
                self._busy(sock)
                return
            try:
                sock.settimeout(SOCKET_TIMEOUT)
                _Handler(sock, client_address, self, head)
            finally:
                self.slots.release()
        finally:
            if sock is not request:
                sock.close()

    def _receive(
        self, request: socket.socket, client: str, key: int, deadline: float
    ) -> socket.socket | None:
        tls = self.web_config.tls
        if tls is None:
            return request
        # the handshake's reads share one deadline in CPython's ssl module
        request.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError is an OSError
            self.log_handshake(client=client, error=str(exc))
            return None
        if not self.reception.update(key, wrapped):
            wrapped.close()
            return None
        return wrapped

    def _busy(self, sock: socket.socket) -> None:
        self._refuse(
            sock,
            b"503 Service Unavailable",
            b"too many scrapes at once, retry shortly\n",
            b"Retry-After: 1\r\n",
        )

    def _refuse(self, sock: socket.socket, status: bytes, body: bytes, more: bytes = b"") -> None:
        """Answer without a handler slot, waiting at most a second for the client to read."""
        configured = {k.lower() for k in self.extra_headers}
        headers = [*self.extra_headers.items()]
        headers += [(k, v) for k, v in DEFAULT_HEADERS if k.lower() not in configured]
        # the configured values were checked at load (no CR/LF): safe to write as they are
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1", "replace")
        try:
            sock.settimeout(1.0)
            sock.sendall(
                b"HTTP/1.0 %s\r\n%sConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n%s"
                b"Content-Length: %d\r\n\r\n%s" % (status, more, extra, len(body), body)
            )
        except OSError:  # ssl.SSLError is an OSError
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that hung up is not news.
        self.log_request(client=str(client_address[0]), exc_info=True)

    def check_auth(self, header: str | None) -> bool:
        return self.auth.check(header)


class _DeadlineWriter(io.BufferedIOBase):
    """The handler's ``wfile``: every byte of the answer is sent before one deadline.

    ``sendall``'s timeout is per call on a plain socket and per chunk on a TLS one, so a client
    that reads a few bytes at a time could keep a slot for minutes; here each send waits only
    what is left of the deadline.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client did not read the answer within its deadline")
            self._sock.settimeout(left)
            try:
                sent += self._sock.send(view[sent : sent + 65536])
            except TimeoutError:
                raise TimeoutError(
                    "the client did not read the answer within its deadline"
                ) from None
        return sent


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    raw_requestline: bytes
    server_version = "supervisor-exporter"
    # Answer garbage with a real status line, not an HTTP/0.9 headerless body.
    default_request_version = "HTTP/1.0"
    sys_version = ""

    def __init__(
        self, request: Any, client_address: Any, server: _Server, head: bytes = b""
    ) -> None:
        self._head = head
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self._sent: set[str] = set()
        super().setup()
        # reception already read the whole request (head, and a form's body) under its
        # deadline; one request per connection. A head cut at MAX_HEAD_BYTES is refused
        # by the handler from what is there.
        self.rfile.close()
        self.rfile = io.BytesIO(self._head)
        self.wfile.close()
        self.wfile = _DeadlineWriter(self.connection, time.monotonic() + ANSWER_DEADLINE)

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

    def send_header(self, keyword: str, value: str) -> None:
        # headers from http_server_config replace the server's own of the same name
        if keyword.lower() in self._configured:
            return
        self._sent.add(keyword.lower())
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        if getattr(self, "_status", 0) == 405:
            allow = "POST" if self.path.partition("?")[0] == "/action" else "GET, HEAD"
            self.send_header("Allow", allow)
        # error answers of http.server (400, 405, 413...) get them too, not only our own
        for name, value in DEFAULT_HEADERS:
            if name.lower() not in self._sent:
                self.send_header(name, value)
        for name, value in self.server.extra_headers.items():
            super().send_header(name, value)
        super().end_headers()

    @property
    def _configured(self) -> set[str]:
        return {name.lower() for name in self.server.extra_headers}

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("exporter.http", client=self.client_address[0], message=format % args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _authenticated(self) -> bool:
        try:
            if self.server.check_auth(self.headers.get("Authorization")):
                return True
        except AuthBusyError:
            self.server.log_auth_busy(client=self.client_address[0])
            body = b"too many password checks at once, retry shortly\n"
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return False
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
