"""The exporter's HTTP side under abuse: a real supervisord, the real exporter, real sockets."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.support import PYTHON, WORKER, free_port, wait_for

ROOT = Path(__file__).parents[2]
SLOW_CLIENTS = 64
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


def scrape(port: int, ctx: ssl.SSLContext | None) -> tuple[int, bytes]:
    scheme = "https" if ctx else "http"
    with urllib.request.urlopen(  # noqa: S310 - loopback
        f"{scheme}://127.0.0.1:{port}/metrics", timeout=10, context=ctx
    ) as resp:
        return resp.status, resp.read()


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


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_64_slowloris_connections_do_not_lock_out_scrapes(supervisord, tmp_path, tls):
    """With 64 clients trickling header bytes, /metrics still answers and they get cut off."""
    port = free_port()
    ctx: ssl.SSLContext | None = None
    extra = ""
    if tls:
        subprocess.run(CERT_CMD, cwd=tmp_path, check=True, capture_output=True)
        (tmp_path / "web.yml").write_text(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        )
        extra = f"--web.config.file {tmp_path / 'web.yml'}"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
    supervisord(programs(port, extra))
    wait_for(lambda: scrape(port, ctx)[0] == 200, timeout=30, what="the exporter answers")

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
            answers.append(scrape(port, ctx))
            time.sleep(0.3)
        assert [200, 200, 200] == [status for status, _ in answers]
        assert all(b"supervisord_up 1\n" in body for _, body in answers)

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
        assert 200 == scrape(port, ctx)[0]
    finally:
        for s in slow:
            s.close()
