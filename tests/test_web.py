"""The exporter's web config, basic-auth checker and refusal logging (no sockets here)."""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import bcrypt
import pytest

from listeners.metrics import routes
from listeners.metrics.proc import ProcReader
from listeners.metrics.snapshot import Snapshot
from listeners.metrics.web import RateLimitedLog, make_server
from listeners.metrics.webconfig import (
    AUTH_WAITING,
    AuthBusyError,
    BasicAuth,
    WebConfig,
    load_web_config,
)
from tests.fakes import FakeClock

GOOD = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Recorder:
    """A checkpw that records what it was asked and how many ran at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.delay = delay
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls.append((password, hashed))
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        return bool(bcrypt.checkpw(password, hashed))


class TestWebConfigFile:
    def test_http_server_config_headers_are_kept(self, tmp_path):
        """http_server_config.headers become extra response headers; http2 is accepted."""
        (tmp_path / "web.yml").write_text(
            "http_server_config:\n  http2: true\n  headers:\n"
            "    x-frame-options: deny\n    Strict-Transport-Security: max-age=31536000\n"
        )
        c = load_web_config(tmp_path / "web.yml")
        assert (
            ("X-Frame-Options", "deny"),
            ("Strict-Transport-Security", "max-age=31536000"),
        ) == c.headers

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            (
                "http_server_config:\n  keep_alive: 1\n",
                "line 2: unsupported key 'keep_alive' in http_server_config",
            ),
            (
                "http_server_config:\n  headers:\n    Content-Length: '1'\n",
                "line 3: header 'Content-Length' cannot be set",
            ),
            ("http_server_config:\n  http2: maybe\n", "line 2: http2 must be true or false"),
            ("http_server_config:\n  headers: [a]\n", "headers must map header names"),
            ("http_server_config: 3\n", "http_server_config must be a mapping"),
            ("tls_server_config:\n  client_ca_file: x\n", "unsupported key 'client_ca_file'"),
            ("\n\nweird: 1\n", "line 3: unsupported key 'weird'"),
        ],
    )
    def test_unsupported_or_bad_keys_are_refused_by_name(self, tmp_path, text, needle):
        """Every key is honoured or refused with its name and line; none is silently ignored."""
        (tmp_path / "web.yml").write_text(text)
        with pytest.raises(ValueError, match=r".*") as exc:
            load_web_config(tmp_path / "web.yml")
        assert needle in str(exc.value)

    @pytest.mark.parametrize(
        "hashed",
        [
            "$2b$10$short",
            "$2b$10$" + "a" * 54,
            "$2x$10$" + "a" * 53,
            "$2b$99$" + "a" * 53,
            "$2b$03$" + "a" * 53,
        ],
    )
    def test_a_malformed_bcrypt_hash_is_refused_with_its_line(self, tmp_path, hashed):
        """A $2... string that is no bcrypt hash stops the start, naming user and line."""
        (tmp_path / "web.yml").write_text(
            f"basic_auth_users:\n  ok: '{GOOD.decode()}'\n  prom: '{hashed}'\n"
        )
        with pytest.raises(ValueError, match=r".*") as exc:
            load_web_config(tmp_path / "web.yml")
        assert "line 3: the password of user 'prom' must be a bcrypt hash" in str(exc.value)

    def test_every_bcrypt_prefix_is_accepted(self, tmp_path):
        """$2a$, $2b$ and $2y$ hashes (htpasswd writes $2y$) all load."""
        tail = GOOD.decode()[4:]
        (tmp_path / "web.yml").write_text(
            "basic_auth_users:\n" + "".join(f"  u{p}: '$2{p}${tail}'\n" for p in "aby")
        )
        assert 3 == len(load_web_config(tmp_path / "web.yml").users)


class TestBasicAuth:
    def test_unknown_user_costs_one_bcrypt_check_like_a_known_one(self):
        """An unknown user is checked against a dummy hash of the same cost as the real ones."""
        rec = Recorder()
        auth = BasicAuth({"prom": GOOD}, checkpw=rec)
        assert not auth.check(basic("nobody", "s3cret"))
        assert not auth.check(basic("prom", "wrong"))
        assert [b"s3cret", b"wrong"] == [pw for pw, _ in rec.calls]
        dummy, real = rec.calls[0][1], rec.calls[1][1]
        assert real == GOOD
        assert (dummy[:7], len(dummy)) == (GOOD[:7], len(GOOD))
        assert dummy != GOOD

    def test_successful_checks_are_cached_failures_are_not(self):
        """The right password pays bcrypt once; a wrong one pays it every time."""
        rec = Recorder()
        auth = BasicAuth({"prom": GOOD}, checkpw=rec)
        assert [True, True, True] == [auth.check(basic("prom", "s3cret")) for _ in range(3)]
        assert [False, False] == [auth.check(basic("prom", "nope")) for _ in range(2)]
        assert 3 == len(rec.calls)

    def test_bcrypt_checks_run_one_at_a_time(self):
        """Guessing threads queue on one lock instead of pinning every core."""
        rec = Recorder(delay=0.02)
        auth = BasicAuth({"prom": GOOD}, checkpw=rec)
        threads = [
            threading.Thread(target=auth.check, args=(basic("prom", f"guess{i}"),))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert (8, 1) == (len(rec.calls), rec.most)

    def test_a_guessing_flood_beyond_the_queue_is_refused_at_once_and_cached_scrapes_pass(self):
        """AUTH_WAITING checks may queue behind the running one; the next raises AuthBusyError
        without bcrypt (guessers cannot hold every request slot); a cached scrape still passes."""
        gate = threading.Event()
        rec = Recorder()

        def slow(password: bytes, hashed: bytes) -> bool:
            if password != b"s3cret":
                gate.wait(30)
            return rec(password, hashed)

        auth = BasicAuth({"prom": GOOD}, checkpw=slow)
        assert auth.check(basic("prom", "s3cret"))  # cached from now on
        threads = [
            threading.Thread(target=auth.check, args=(basic("prom", f"guess{i}"),))
            for i in range(AUTH_WAITING + 1)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while auth._waiting._value and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        try:
            for user in ("nobody", "prom"):
                with pytest.raises(AuthBusyError):
                    auth.check(basic(user, "guess"))
            assert 2 == auth.refused_busy
            assert auth.check(basic("prom", "s3cret"))
        finally:
            gate.set()
            for t in threads:
                t.join(timeout=30)
        assert 1 + AUTH_WAITING + 1 == len(rec.calls)
        assert not auth.check(basic("prom", "after"))  # the queue is free again: bcrypt runs
        assert 2 == auth.refused_busy

    @pytest.mark.parametrize(
        "header", [None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"noco").decode()]
    )
    def test_malformed_headers_are_refused_without_bcrypt(self, header):
        """No header, another scheme, bad base64 or no colon: refused before any bcrypt."""
        rec = Recorder()
        assert not BasicAuth({"prom": GOOD}, checkpw=rec).check(header)
        assert [] == rec.calls

    def test_a_hash_bcrypt_rejects_is_a_refusal_not_a_crash(self):
        """checkpw raising ValueError (a bad hash) answers False."""
        auth = BasicAuth({"prom": b"$2b$04$broken"}, dummy=GOOD)
        assert not auth.check(basic("prom", "x"))

    def test_a_password_over_72_bytes_opens_the_hash_htpasswd_made_of_it(self):
        """htpasswd and bcrypt < 5 hash the first 72 bytes; bcrypt 5 refuses longer input.
        The real bcrypt: the long password opens its hash, a different 73rd byte too (bcrypt
        never saw it), a different 72nd byte does not."""
        long = "p" * 71 + "q" + "tail beyond bcrypt's 72 bytes"
        hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4))
        auth = BasicAuth({"prom": hashed})
        assert auth.check(basic("prom", long))
        assert auth.check(basic("prom", long[:72] + "X"))
        assert not auth.check(basic("prom", "p" * 71 + "r" + long[72:]))

    def test_no_users_means_no_auth(self):
        """Without basic_auth_users every request passes."""
        assert BasicAuth({}).check(None)


class TestRateLimitedLog:
    def test_one_line_per_interval_with_the_suppressed_count(self):
        """Within an interval only the first refusal is logged; the next line counts the rest."""
        clock = FakeClock(100.0)
        lines: list[dict[str, object]] = []
        rl = RateLimitedLog(
            "exporter.too_many_connections",
            interval=10.0,
            clock=clock,
            emit=lambda event, **kw: lines.append({"event": event, **kw}),
        )
        for _ in range(50):
            rl(client="127.0.0.1")
        clock.advance(10.0)
        rl(client="127.0.0.2")
        assert [
            {"event": "exporter.too_many_connections", "client": "127.0.0.1"},
            {"event": "exporter.too_many_connections", "client": "127.0.0.2", "suppressed": 49},
        ] == lines


class StaticState:
    """A SnapshotSource with supervisord up and no processes."""

    def snapshot(self) -> Snapshot:
        return Snapshot(True, "4.3.0", "test", (), 0, 0, 0)


@pytest.fixture
def server() -> Iterator[Callable[..., Any]]:
    """Factory: an exporter HTTP server on a free loopback port; stopped at teardown."""
    made: list[Any] = []

    def start(web_config: WebConfig | None = None) -> Any:
        srv = make_server(
            "127.0.0.1",
            0,
            state=StaticState(),
            reader=ProcReader(),
            web_config=web_config or WebConfig(),
            dashboard_url="http://127.0.0.1:8080/",
        )
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.shutdown()
        srv.server_close()


def get(port: int, path: str = "/metrics") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def wait_closed(sock: socket.socket) -> bytes:
    """What the server sent before closing ``sock`` (bounded by the socket timeout)."""
    sock.settimeout(20)
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


class TestServer:
    def test_configured_headers_are_sent_and_replace_the_defaults(self, server):
        """http_server_config.headers appear on every answer, once, replacing the server's."""
        srv = server(
            WebConfig(headers=(("X-Frame-Options", "deny"), ("X-Content-Type-Options", "x")))
        )
        resp = get(srv.server_address[1])
        assert 200 == resp.status
        assert ["deny"] == resp.headers.get_all("X-Frame-Options")
        assert ["x"] == resp.headers.get_all("X-Content-Type-Options")

    def test_a_head_that_does_not_arrive_in_time_is_cut_off(self, server):
        """One deadline for the whole request head, however steadily bytes trickle in."""
        srv = server()
        srv.header_deadline = 0.5
        with socket.create_connection(srv.server_address, timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n")
            assert b"" == wait_closed(s)
        assert 200 == get(srv.server_address[1]).status

    def test_when_reception_is_full_the_oldest_waiting_client_is_dropped(self, server):
        """A new client always gets in: the longest-waiting half-sent request makes room."""
        srv = server()
        srv.reception.cap = 3
        port = srv.server_address[1]
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            for s in waiting:
                s.sendall(b"GET /me")
                time.sleep(0.05)
            assert 200 == get(port).status
            assert b"" == wait_closed(waiting[0])
        finally:
            for s in waiting:
                s.close()

    def test_all_slots_busy_answers_503_at_once(self, server):
        """A complete request finding every service slot taken gets 503 and Retry-After."""
        srv = server()
        srv.slots = threading.BoundedSemaphore(1)
        assert srv.slots.acquire(blocking=False)
        resp = get(srv.server_address[1])
        assert (503, "1") == (resp.status, resp.getheader("Retry-After"))
        srv.slots.release()
        assert 200 == get(srv.server_address[1]).status


SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def raw_answer(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return wait_closed(s)


def head_of(answer: bytes) -> dict[str, list[str]]:
    """The header fields of a raw HTTP answer, by lower-cased name."""
    fields: dict[str, list[str]] = {}
    for line in answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


class BlockingState:
    """A SnapshotSource whose snapshot() waits for ``release``: a scrape that holds its slot."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def snapshot(self) -> Snapshot:
        self.entered.release()
        self.release.wait(60)
        return Snapshot(True, "4.3.0", "test", (), 0, 0, 0)


class TestSecurityHeaders:
    @pytest.mark.parametrize("path", ["/metrics", "/healthz", "/", "/api/status", "/nope"])
    def test_every_answer_carries_the_security_headers_once(self, server, path):
        """nosniff, the CSP, Referrer-Policy and no-store on pages, metrics, JSON and 404."""
        srv = server()
        resp = get(srv.server_address[1], path)
        for name, want in SECURITY.items():
            assert [want] == resp.headers.get_all(name), name
        (csp,) = resp.headers.get_all("Content-Security-Policy")
        assert "script-src 'self'" in csp

    @pytest.mark.parametrize(
        ("request_bytes", "status"),
        [
            (b"BREW /metrics HTTP/1.0\r\n\r\n", b"405"),
            (b"GET /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"413"),
            (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
            (b"GET /" + b"a" * 5000 + b" HTTP/1.0\r\n\r\n", b"414"),
        ],
    )
    def test_refusals_of_http_server_carry_them_too(self, server, request_bytes, status):
        """http.server's own error answers (405, 413, 400, 414) get nosniff and the CSP."""
        srv = server()
        answer = raw_answer(srv.server_address[1], request_bytes)
        assert answer.startswith(b"HTTP/1.0 " + status)
        fields = head_of(answer)
        assert ["nosniff"] == fields["x-content-type-options"]
        assert 1 == len(fields["content-security-policy"])

    def test_static_files_keep_their_own_cache_header(self, server):
        """The script may be cached (max-age), everything else is no-store: one header each."""
        srv = server()
        resp = get(srv.server_address[1], "/static/status.js")
        assert ["max-age=300"] == resp.headers.get_all("Cache-Control")
        assert ["nosniff"] == resp.headers.get_all("X-Content-Type-Options")

    def test_a_401_carries_configured_and_default_headers(self, server):
        """Without credentials the 401 still has HSTS from the web config and nosniff."""
        hsts = "max-age=31536000"
        srv = server(
            WebConfig(
                users=(("prom", GOOD.decode()),),
                headers=(("Strict-Transport-Security", hsts),),
            )
        )
        resp = get(srv.server_address[1])
        assert 401 == resp.status
        assert [hsts] == resp.headers.get_all("Strict-Transport-Security")
        assert ["nosniff"] == resp.headers.get_all("X-Content-Type-Options")

    def test_the_busy_503_carries_configured_and_default_headers(self, server):
        """The 503 written straight to the socket has the web config's headers and the defaults,
        a configured one replacing the default of the same name."""
        srv = server(
            WebConfig(
                headers=(
                    ("Strict-Transport-Security", "max-age=60"),
                    ("X-Content-Type-Options", "custom"),
                )
            )
        )
        srv.slots = threading.BoundedSemaphore(1)
        assert srv.slots.acquire(blocking=False)
        try:
            answer = raw_answer(srv.server_address[1], b"GET /metrics HTTP/1.0\r\n\r\n")
        finally:
            srv.slots.release()
        assert answer.startswith(b"HTTP/1.0 503")
        fields = head_of(answer)
        assert ["max-age=60"] == fields["strict-transport-security"]
        assert ["custom"] == fields["x-content-type-options"]
        assert ["no-store"] == fields["cache-control"]
        assert ["1"] == fields["retry-after"]


class TestSlotsAndReception:
    def test_slow_clients_hold_no_service_slot(self, server):
        """20 half-sent requests with only 2 service slots: a scrape is still answered 200."""
        srv = server()
        srv.slots = threading.BoundedSemaphore(2)
        port = srv.server_address[1]
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        try:
            for s in slow:
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x")
            for _ in range(3):
                assert 200 == get(port).status
        finally:
            for s in slow:
                s.close()

    def test_requests_past_the_busy_slots_get_503_then_service_resumes(self, server):
        """Two scrapes hold both slots (their snapshot blocks): the third gets 503 at once,
        logged once per interval; once they finish, scrapes are answered again."""
        state = BlockingState()
        srv = make_server(
            "127.0.0.1",
            0,
            state=state,
            reader=ProcReader(),
            web_config=WebConfig(),
            dashboard_url="http://127.0.0.1:8080/",
        )
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        lines: list[dict[str, Any]] = []
        srv.log_busy = RateLimitedLog(
            "exporter.too_many_connections",
            interval=3600,
            emit=lambda event, **kw: lines.append({"event": event, **kw}),
        )
        srv.slots = threading.BoundedSemaphore(2)
        port = srv.server_address[1]
        holders = [threading.Thread(target=get, args=(port,), daemon=True) for _ in range(2)]
        try:
            for t in holders:
                t.start()
            for _ in holders:
                assert state.entered.acquire(timeout=60), "a scrape never reached its snapshot"
            busy = [get(port) for _ in range(3)]
            assert [(503, "1")] * 3 == [(r.status, r.getheader("Retry-After")) for r in busy]
            assert [{"event": "exporter.too_many_connections", "client": "127.0.0.1"}] == lines
            state.release.set()
            for t in holders:
                t.join(60)
            assert 200 == get(port).status
        finally:
            state.release.set()
            srv.shutdown()
            srv.server_close()

    def test_a_dropped_slow_client_is_closed_unanswered_and_logged(self, server):
        """Evicted from a full reception, the oldest half-sent request is closed with no answer,
        the newcomer is served, and the eviction is logged as exporter.slow_client_dropped."""
        srv = server()
        lines: list[dict[str, Any]] = []
        srv.log_dropped = RateLimitedLog(
            "exporter.slow_client_dropped",
            interval=3600,
            emit=lambda event, **kw: lines.append({"event": event, **kw}),
        )
        srv.reception.cap = 1
        port = srv.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            first.sendall(b"GET /metrics HTTP/1.0\r\n")
            wait_for_waiting(srv, 1)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                second.sendall(b"GET /metrics HTTP/1.0\r\n")
                assert b"" == wait_closed(first)
                second.sendall(b"\r\n")
                assert wait_closed(second).startswith(b"HTTP/1.0 200")
        assert "exporter.slow_client_dropped" == lines[0]["event"]
        assert "too many connections still sending headers" == lines[0]["reason"]


def wait_for_waiting(srv: Any, count: int) -> None:
    """Wait (generously) until ``count`` connections sit in the server's reception."""
    deadline = time.monotonic() + 60
    while len(srv.reception._waiting) < count:
        assert time.monotonic() < deadline, "the connection never reached reception"
        time.sleep(0.01)


class TestHeaderDeadline:
    def test_bytes_trickling_in_do_not_extend_the_deadline(self, server):
        """One byte every 50 ms keeps arriving, yet the head's single deadline closes it."""
        srv = server()
        srv.header_deadline = 0.5
        with socket.create_connection(srv.server_address, timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
            closed = False
            # 400 bytes at 50 ms would take 20 s: far past the 0.5 s deadline, however loaded
            for _ in range(400):
                try:
                    s.sendall(b"a")
                except OSError:
                    closed = True
                    break
                if _closed_by_server(s):
                    closed = True
                    break
                time.sleep(0.05)
            assert closed
        assert 200 == get(srv.server_address[1]).status

    def test_a_client_that_never_starts_tls_is_cut_off(self, server, tmp_path):
        """With TLS, a connection that sends no handshake at all is closed at the deadline,
        and a real HTTPS scrape is answered meanwhile."""
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        (tmp_path / "web.yml").write_text(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        )
        srv = server(load_web_config(tmp_path / "web.yml"))
        srv.header_deadline = 0.5
        port = srv.server_address[1]
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
            conn.request("GET", "/healthz")
            assert 200 == conn.getresponse().status
            conn.close()
            assert b"" == wait_closed(silent)


class TestPerConnectionLogs:
    def test_failed_handshakes_are_logged_once_per_interval_with_the_count(self, server, tmp_path):
        """Twenty plain-HTTP requests to a TLS port: one log line, and the next line (after the
        interval) says how many were skipped; HTTPS scrapes are answered throughout."""
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        (tmp_path / "web.yml").write_text(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        )
        srv = server(load_web_config(tmp_path / "web.yml"))
        clock = FakeClock(0.0)
        lines: list[dict[str, Any]] = []
        srv.log_handshake = RateLimitedLog(
            "exporter.tls_handshake_failed",
            interval=60,
            clock=clock,
            emit=lambda event, **kw: lines.append({"event": event, **kw}),
        )
        port = srv.server_address[1]
        for _ in range(20):  # never an HTTP answer (OpenSSL may send an alert record)
            assert not raw_answer(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP")
        # ssl closes the socket before the handshake error reaches the log: wait for the 20th
        deadline = time.monotonic() + 30
        while len(lines) + srv.log_handshake.suppressed < 20:
            assert time.monotonic() < deadline, "the handshake failures were never logged"
            time.sleep(0.01)
        clock.now = 61.0
        assert not raw_answer(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP")
        deadline = time.monotonic() + 30
        while len(lines) < 2:
            assert time.monotonic() < deadline, "the 21st failure was never logged"
            time.sleep(0.01)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        conn.request("GET", "/healthz")
        assert 200 == conn.getresponse().status
        conn.close()
        assert [ln["event"] for ln in lines] == ["exporter.tls_handshake_failed"] * 2
        assert ("suppressed" not in lines[0], lines[1].get("suppressed")) == (True, 19)
        assert all(ln["client"] == "127.0.0.1" and ln["error"] for ln in lines)

    def test_requests_that_fail_are_logged_once_per_interval(self, server):
        """socketserver calls handle_error for each connection whose handling raised (a client
        that hung up mid-answer): five in a row give one line per interval, not five."""
        srv = server()
        lines: list[dict[str, Any]] = []
        srv.log_request = RateLimitedLog(
            "exporter.request_failed",
            interval=3600,
            emit=lambda event, **kw: lines.append({"event": event, **kw}),
        )
        for _ in range(5):
            srv.handle_error(None, ("127.0.0.1", 1))
        assert [{"event": "exporter.request_failed", "client": "127.0.0.1", "exc_info": True}] == (
            lines
        )


class TestRequestBody:
    def test_a_form_body_sent_after_its_headers_is_read_whole(self, server, monkeypatch):
        """Browsers may send a POST's body in a later segment than its headers: the handler
        gets every byte of it, not the empty rest of what reception had read."""
        got: list[bytes] = []

        def handle_post(site, path, user, headers, body):
            got.append(body)
            return routes.Response(200, "text/plain", b"ok\n")

        monkeypatch.setattr(routes, "handle_post", handle_post)
        srv = server()
        body = b"action=restart&process=web%3Aweb_0&token=abc"
        head = b"POST /action HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        with socket.create_connection(srv.server_address, timeout=10) as s:
            s.sendall(head)
            time.sleep(0.3)
            s.sendall(body[:10])
            time.sleep(0.3)
            s.sendall(body[10:])
            answer = wait_closed(s)
        assert answer.startswith(b"HTTP/1.0 200")
        assert [body] == got

    def test_a_body_that_never_comes_is_cut_off_at_the_deadline(self, server, monkeypatch):
        """A Content-Length promised and not sent holds the connection only until the
        deadline; the next scrape is answered."""
        monkeypatch.setattr(routes, "handle_post", lambda *a: routes.Response(200, "t", b""))
        srv = server()
        srv.header_deadline = 0.5
        with socket.create_connection(srv.server_address, timeout=10) as s:
            s.sendall(b"POST /action HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\nab")
            assert not wait_closed(s).startswith(b"HTTP/1.0 200")
        assert 200 == get(srv.server_address[1]).status


def _closed_by_server(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


CERT_CMD = [
    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem",
]  # fmt: skip


class TestAnswerDeadline:
    def test_a_client_that_does_not_read_is_cut_at_the_deadline(self):
        """8 MiB to a peer that reads nothing: TimeoutError at the deadline, not a hang."""
        from listeners.metrics.web import _DeadlineWriter

        ours, theirs = socket.socketpair()
        try:
            writer = _DeadlineWriter(ours, time.monotonic() + 0.5)
            with pytest.raises(TimeoutError, match="within its deadline"):
                writer.write(b"x" * (8 << 20))
        finally:
            ours.close()
            theirs.close()

    def test_a_client_that_reads_gets_every_byte(self):
        """A reader that keeps up gets the whole answer, in order."""
        from listeners.metrics.web import _DeadlineWriter

        ours, theirs = socket.socketpair()
        got = bytearray()

        def read() -> None:
            while chunk := theirs.recv(65536):
                got.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        data = bytes(range(256)) * 4096
        try:
            assert len(data) == _DeadlineWriter(ours, time.monotonic() + 10).write(data)
        finally:
            ours.close()
            reader.join(10)
            theirs.close()
        assert bytes(got) == data
