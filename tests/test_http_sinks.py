"""The webhook and Alertmanager sinks against real HTTP(S) servers on loopback: redirects are
not followed, a big error body is not read whole, an untrusted certificate says what to do
without the URL's token, and an odd Retry-After does not raise."""

from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from listeners.notify.alert import Alert
from listeners.notify.alertmanager import AlertmanagerSink
from listeners.notify.sinks import SinkError, http_status_error, parse_retry_after
from listeners.notify.webhook import WebhookSink

TOKEN = "XoXbSeCrEtToKeN123456"  # noqa: S105 - a made-up token the errors must not show


class Answers(BaseHTTPRequestHandler):
    """Answers every POST with ``server.answer``: (status, headers, body); counts requests."""

    server: Any

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.path)
        status, headers, body = self.server.answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up without reading it all
            self.server.cut_short = True

    def log_message(self, *args: Any) -> None:
        pass


def serve(tls: ssl.SSLContext | None = None) -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.seen = []  # type: ignore[attr-defined]
    server.cut_short = False  # type: ignore[attr-defined]
    server.answer = (200, {}, b"")  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    yield from serve()


def crash() -> Alert:
    return Alert(kind="crash", host="h", group="g", name="w", key="k1", time=1.0)


class TestRedirects:
    def test_a_webhook_that_redirects_is_given_up_with_the_reason_and_not_followed(self, receiver):
        """307 to elsewhere: a permanent error saying to give the final URL; nothing follows."""
        port = receiver.server_address[1]
        receiver.answer = (307, {"Location": f"http://127.0.0.1:{port}/elsewhere"}, b"")
        sink = WebhookSink(f"http://127.0.0.1:{port}/hook", name="w")
        with pytest.raises(SinkError) as err:
            sink.send(crash())
        assert (err.value.permanent, receiver.seen) == (True, ["/hook"])
        assert "redirects" in str(err.value)

    def test_3xx_statuses_are_permanent(self):
        """Every redirect status is a configuration to fix, not a passing trouble."""
        assert all(
            http_status_error("w", code, "x", {}).permanent for code in (301, 302, 303, 307, 308)
        )


class TestBigAnswers:
    def test_an_alertmanager_error_body_of_8_mib_is_not_read_whole(self, receiver):
        """A 500 with a huge body: the error quotes at most 200 characters of it, and the
        sink hangs up instead of reading 8 MiB into memory."""
        port = receiver.server_address[1]
        receiver.answer = (500, {}, b"e" * (8 << 20))
        sink = AlertmanagerSink(f"http://127.0.0.1:{port}", name="am")
        with pytest.raises(SinkError) as err:
            sink.send(crash())
        assert "HTTP 500" in str(err.value)
        assert str(err.value).count("e" * 100) <= 2
        assert len(str(err.value)) < 400
        # the server's write fails once the closed connection resets it
        end = time.monotonic() + 5
        while not receiver.cut_short and time.monotonic() < end:
            time.sleep(0.05)
        assert receiver.cut_short is True


class TestUntrustedCertificate:
    def test_the_error_says_what_to_do_and_keeps_the_token_out(self, tmp_path: Path):
        """A self-signed HTTPS receiver: 'certificate verify failed' and REQUESTS_CA_BUNDLE
        in the error, never the token in the URL's path."""
        openssl = shutil.which("openssl")
        assert openssl, "openssl is missing: apt-get install openssl"
        key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True,
        )  # fmt: skip
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        servers = serve(ctx)
        server = next(servers)
        try:
            port = server.server_address[1]
            url = f"https://127.0.0.1:{port}/services/T0001/B0001/{TOKEN}"
            with pytest.raises(SinkError) as err:
                WebhookSink(url, format="slack", name="slack").send(crash())
        finally:
            next(servers, None)
        text = str(err.value)
        assert ("certificate verify failed" in text, "REQUESTS_CA_BUNDLE" in text) == (True, True)
        assert TOKEN not in text


class TestRetryAfter:
    @pytest.mark.parametrize("value", ["\xb2", "1\xb9", "\u0663"])
    def test_digits_that_are_not_ascii_are_ignored_not_raised(self, value):
        """'²' is a digit to str.isdigit() but not to float(): no ValueError, no wait."""
        assert parse_retry_after(value) is None


class TestLibraryLogs:
    def test_urllib3_s_warning_about_a_bad_header_keeps_the_token_out_and_is_one_line(self):
        """A receiver sends a header line without a colon: urllib3 logs a warning naming the
        whole URL, with a traceback. It reaches our log as one JSON line, token hidden."""
        import socket

        from listeners.core import log

        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nthis line has no colon\r\n\r\nok"
                )

        threading.Thread(target=answer, daemon=True).start()
        out = io.StringIO()
        log.configure("info", stream=out, json=True)
        try:
            url = f"http://127.0.0.1:{port}/services/T0001/B0001/{TOKEN}"
            WebhookSink(url, format="slack", name="slack").send(crash())
        finally:
            log.configure("info")
            server.close()
        text = out.getvalue()
        lines = [json.loads(line) for line in text.splitlines()]
        assert (TOKEN in text, "Traceback" in text) == (False, False)
        assert ["stdlib.urllib3.connection"] == [d["event"] for d in lines]
        assert "/***" in lines[0]["message"]
