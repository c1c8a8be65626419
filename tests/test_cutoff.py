"""core/cutoff: a call past its deadline is ended by shutting down its sockets. Real sockets on
loopback, with receivers that trickle forever."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from listeners.core.cutoff import CutoffCall


class Trickler:
    """A TCP server that reads what it is sent and answers one byte every 0.1 s, for good."""

    def __init__(
        self,
        first: bytes = b"HTTP/1.1 200 OK\r\n",
        tls: ssl.SSLContext | None = None,
        head: bytes = b"",
    ) -> None:
        self.tls = tls
        self.head = head
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.first = first
        self.closed_by_peer = threading.Event()
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn.settimeout(5)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        conn.settimeout(0.1)
        with conn:
            if self.head:
                with contextlib.suppress(OSError):
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(self.head)
                    conn.settimeout(0.1)
            sent = 0
            while not self.stop.is_set():
                try:
                    if not conn.recv(65536) and sent:
                        self.closed_by_peer.set()
                        return
                except TimeoutError:
                    pass
                except OSError:
                    self.closed_by_peer.set()
                    return
                try:
                    conn.sendall(self.first[sent % len(self.first) : sent % len(self.first) + 1])
                except OSError:
                    self.closed_by_peer.set()
                    return
                sent += 1

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    yield server
    server.close()


def read_forever(port: int, timeout: float = 1.0) -> None:
    """What a library does with a trickling receiver: each read comes within the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        while sock.recv(1):
            pass


class TestCutoffCall:
    def test_a_call_in_time_returns_true(self):
        """Finished before the deadline: True, nothing cut."""
        got: list[int] = []
        assert (CutoffCall(lambda: got.append(1)).run(5.0), got) == (True, [1])

    def test_the_call_s_own_error_is_raised_in_the_caller(self):
        """An exception of the call reaches the caller as it is."""

        def fail() -> None:
            raise ValueError("bad")

        with pytest.raises(ValueError, match="bad"):
            CutoffCall(fail).run(5.0)

    def test_a_reader_of_an_endless_trickle_is_cut_off_and_ends(self, trickler):
        """A 1 s socket timeout never fires on a byte every 0.1 s; the 0.5 s deadline ends it."""
        call = CutoffCall(lambda: read_forever(trickler.port))
        t0 = time.monotonic()
        finished = call.run(0.5, grace=5.0)
        took = time.monotonic() - t0
        assert (finished, call.alive) == (False, False)
        assert trickler.closed_by_peer.wait(5)
        print(f"cut off and unwound {took:.2f} s after the start")

    def test_a_tls_reader_of_an_endless_trickle_is_cut_off(self, tmp_path):
        """The TLS socket (a new object made from the plain one) is shut down too."""
        openssl = shutil.which("openssl")
        assert openssl, "openssl is missing: apt-get install openssl"
        key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True,
        )  # fmt: skip
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(crt, key)
        trickler = Trickler(tls=server_ctx)
        client_ctx = ssl.create_default_context(cafile=str(crt))
        reads: list[int] = []

        def read_tls() -> None:
            raw = socket.create_connection(("127.0.0.1", trickler.port), timeout=1.0)
            with raw, client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
                while tls.recv(1):
                    reads.append(1)

        call = CutoffCall(read_tls)
        try:
            finished = call.run(1.5, grace=5.0)
        finally:
            trickler.close()
        assert (finished, call.alive, len(reads) > 3) == (False, False, True)

    def test_no_new_connection_after_the_cut(self, trickler):
        """requests reads a 307's body, swallows the error of the cut socket and follows the
        redirect on a new socket: that connect is refused, the call ends."""
        import requests

        target = trickler.port
        redirector = Trickler(
            head=(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{target}/\r\n"
                "Content-Length: 100000\r\n\r\n"
            ).encode(),
            first=b"x",
        )

        def post() -> None:
            requests.post(f"http://127.0.0.1:{redirector.port}/", json={}, timeout=1.0)

        call = CutoffCall(post)
        try:
            finished = call.run(1.0, grace=5.0)
        finally:
            redirector.close()
        assert (finished, call.alive, trickler.connections) == (False, False, 0)

    def test_a_call_stuck_outside_a_socket_is_left_alive(self):
        """Nothing to shut down: the call goes on, and alive says so."""
        release = threading.Event()
        call = CutoffCall(lambda: release.wait(10) and None)
        try:
            assert (call.run(0.1, grace=0.1), call.alive) == (False, True)
        finally:
            release.set()

    def test_other_threads_sockets_are_not_touched(self, trickler):
        """A socket made by another thread meanwhile stays open after the cut."""
        other = socket.create_connection(("127.0.0.1", trickler.port), timeout=5)
        try:
            call = CutoffCall(lambda: read_forever(trickler.port))
            assert call.run(0.3, grace=5.0) is False
            other.sendall(b"x")
            assert other.recv(1)
        finally:
            other.close()
