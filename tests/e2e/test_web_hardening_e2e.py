"""The exporter's HTTP side under abuse: a real supervisord, the real exporter, real sockets."""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.e2e.support import PYTHON, WORKER, free_port, wait_for

ROOT = Path(__file__).parents[2]
SLOW_CLIENTS = 64
USER, PASSWORD = "prometheus", "s3cret-scrape"
CERT_CMD = [
    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem",
]  # fmt: skip


def programs(port: int, extra: str) -> str:
    return textwrap.dedent(f"""
        [program:steady]
        command={PYTHON} {WORKER} steady
        startsecs=0

        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter --web.listen-address 127.0.0.1:{port} {extra}
        events=PROCESS_STATE,TICK_60
        buffer_size=64
        environment=PYTHONPATH="{ROOT}"
        """)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scrape(
    port: int, ctx: ssl.SSLContext | None, authorization: str | None = None
) -> tuple[int, bytes]:
    scheme = "https" if ctx else "http"
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/metrics")  # noqa: S310 - loopback
    if authorization is not None:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # 401 and the like: the answer, not a failure
        with exc:
            return exc.code, exc.read()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` (readable with end of stream or an error)."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(4096) == b""
    except ssl.SSLWantReadError:
        return False
    except (OSError, ssl.SSLError):
        return True


@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_64_slowloris_connections_do_not_lock_out_scrapes(supervisord, tmp_path, tls, auth):
    """With 64 clients trickling header bytes, /metrics still answers and they get cut off.

    With basic auth (a bcrypt user in the web config) the scrapes carry the right credentials
    and get 200, and a wrong password gets 401 while the slow clients hold their connections.
    """
    port = free_port()
    ctx: ssl.SSLContext | None = None
    config = ""
    if tls:
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        config += "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
    authorization: str | None = None
    if auth:
        # cost 4 keeps the one uncached check short; the checker is the same at any cost
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        config += f"basic_auth_users:\n  {USER}: '{hashed}'\n"
        authorization = basic(USER, PASSWORD)
    extra = ""
    if config:
        (tmp_path / "web.yml").write_text(config)
        extra = f"--web.config.file {tmp_path / 'web.yml'}"
    supervisord(programs(port, extra))
    wait_for(
        lambda: scrape(port, ctx, authorization)[0] == 200,
        timeout=30,
        what="the exporter answers",
    )

    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            s.sendall(b"G")
            slow.append(s)
        # every slow client is connected and mid-request: all of them would hold a slot now
        answers = []
        for _ in range(3):
            answers.append(scrape(port, ctx, authorization))
            time.sleep(0.3)
        assert [200, 200, 200] == [status for status, _ in answers]
        assert all(b"supervisord_up 1\n" in body for _, body in answers)
        if auth:
            status, body = scrape(port, ctx, basic(USER, "wrong-" + PASSWORD))
            assert (401, b"") == (status, body)
            assert 401 == scrape(port, ctx)[0]  # no credentials at all

        # keep trickling (one byte a second, far inside any per-read timeout): the server
        # still closes them, because the whole head has one deadline
        open_ones = list(slow)
        for _ in range(40):
            open_ones = [s for s in open_ones if not closed_by_server(s)]
            if not open_ones:
                break
            for s in open_ones:
                with contextlib.suppress(OSError, ssl.SSLError):
                    s.sendall(b"E")
            time.sleep(1.0)
        assert [] == open_ones
        assert 200 == scrape(port, ctx, authorization)[0]
    finally:
        for s in slow:
            s.close()


def _exporter(supervisord, tmp_path, tls: bool) -> tuple[int, ssl.SSLContext | None, str]:
    """A real exporter with basic auth (and TLS); its port, the client context, credentials."""
    port = free_port()
    ctx: ssl.SSLContext | None = None
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    config = f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    if tls:
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        config += "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
    (tmp_path / "web.yml").write_text(config)
    supervisord(programs(port, f"--web.config.file {tmp_path / 'web.yml'}"))
    authorization = basic(USER, PASSWORD)
    wait_for(lambda: scrape(port, ctx, authorization)[0] == 200, 30, what="the exporter answers")
    return port, ctx, authorization


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_64_clients_trickling_a_post_body_do_not_lock_out_scrapes(supervisord, tmp_path, tls):
    """80 clients send a whole ``POST /action`` head announcing 4,096 bytes, no credentials,
    then trickle the body a byte at a time. The body is read before a handler slot is taken,
    under the head's deadline: every scrape meanwhile gets 200, and a client whose body does
    not come in time gets 408, not a held slot."""
    port, ctx, authorization = _exporter(supervisord, tmp_path, tls)
    head = (
        b"POST /action HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-"
        b"urlencoded\r\nContent-Length: 4096\r\n\r\n"
    )
    slow: list[socket.socket] = []
    try:
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            s.sendall(head + b"a")
            slow.append(s)
        statuses = []
        for _ in range(8):
            for s in slow:
                with contextlib.suppress(OSError, ssl.SSLError):
                    s.sendall(b"b")
            statuses.append(scrape(port, ctx, authorization)[0])
            time.sleep(0.5)
        assert [200] * 8 == statuses
        # past the 5 s deadline, the ones still open were answered 408 and closed
        answered = []
        for s in slow:
            s.settimeout(10)
            data = b""
            with contextlib.suppress(OSError, ssl.SSLError):
                while chunk := s.recv(4096):
                    data += chunk
            answered.append(data.split(b"\r\n", 1)[0])
        assert {b"HTTP/1.0 408 Request Timeout"} == set(answered), set(answered)
    finally:
        for s in slow:
            s.close()


def test_a_form_body_in_a_later_segment_than_its_head_still_arrives(supervisord, tmp_path):
    """Reception waits for a short body sent after its head (as browsers may send it): the
    request reaches the handler whole (here: refused 403 for its missing Origin, not 408)."""
    port, _, authorization = _exporter(supervisord, tmp_path, tls=False)
    body = b"action=restart&process=steady%3Asteady&token=x"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /action HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (authorization.encode(), len(body))
        )
        time.sleep(1.0)
        s.sendall(body)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.0 403"), answer[:200]


def test_a_head_ending_in_lf_then_crlf_is_answered(supervisord, tmp_path):
    """A header line ending in LF followed by a CRLF blank line (mixed endings, as
    http.server accepts them) is a complete head, answered at once."""
    port, _, authorization = _exporter(supervisord, tmp_path, tls=False)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nAuthorization: %s\n\r\n" % authorization.encode())
        answer = s.recv(4096)  # unseen as a head, it was dropped unanswered at the deadline
    assert answer.startswith(b"HTTP/1.0 200"), answer[:200]


def test_a_guessing_flood_does_not_lock_out_the_scraper(supervisord, tmp_path):
    """48 threads guess passwords (half for an unknown user, half for the real one) against a
    cost-10 bcrypt user for 6 s. The scraper with the right password keeps getting 200 (its
    check is cached); the guessers get 401, or 503 once 32 checks queue, never a held slot."""
    port = free_port()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    supervisord(programs(port, f"--web.config.file {tmp_path / 'web.yml'}"))
    authorization = basic(USER, PASSWORD)
    wait_for(lambda: scrape(port, None, authorization)[0] == 200, 30, what="the exporter answers")

    stop = threading.Event()
    guessed: list[int] = []

    def guess(n: int) -> None:
        user = USER if n % 2 else "nobody"
        i = 0
        while not stop.is_set():
            i += 1
            guessed.append(scrape(port, None, basic(user, f"guess-{n}-{i}"))[0])

    threads = [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(48)]
    for t in threads:
        t.start()
    scrapes: list[int] = []
    try:
        end = time.monotonic() + 6
        while time.monotonic() < end:
            scrapes.append(scrape(port, None, authorization)[0])
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"scrapes {scrapes}; guesses answered {len(guessed)}: {sorted(set(guessed))}")
    assert ({200}, True) == (set(scrapes), len(scrapes) >= 6)
    assert {401, 503} == set(guessed)
