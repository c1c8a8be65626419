"""The wake thread: schedule, back-off and recovery driven by a fake poke, no real clock."""

from __future__ import annotations

import socket
import threading

import pytest

from listeners.supervisor import SupervisorError
from listeners.wake import Waker, connect_poke, rpc_poke


class FakePoke:
    """Fails while ``down`` is set; counts calls; sets ``reached`` after ``target`` calls."""

    def __init__(self, target: int = 0) -> None:
        self.calls = 0
        self.down = False
        self.target = target
        self.reached = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.target and self.calls >= self.target:
            self.reached.set()
        if self.down:
            raise SupervisorError("cannot reach supervisord at unix:///x.sock: No such file")


class FakeRPC:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, *args: object) -> object:
        self.calls.append(method)
        return "3.0"


class TestSchedule:
    def test_each_step_pokes_once_and_waits_the_interval(self):
        """A successful poke is followed by the configured interval."""
        poke = FakePoke()
        waker = Waker(poke, 0.2)
        assert [0.2, 0.2, 0.2] == [waker.step() for _ in range(3)]
        assert (3, 3, 0) == (poke.calls, waker.pokes, waker.failures)

    def test_failures_double_the_wait_up_to_the_cap_and_success_resets_it(self):
        """supervisord unreachable: 0.4, 0.8, ... capped; first success returns to 0.2."""
        poke = FakePoke()
        poke.down = True
        waker = Waker(poke, 0.2, max_backoff=3.0)
        delays = [waker.step() for _ in range(6)]
        poke.down = False
        assert [0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 0.2] == [*delays, waker.step()]
        assert (0, 1) == (waker.failures, waker.pokes)

    def test_os_errors_back_off_too(self):
        """A raw OSError (socket gone) is a failure like a SupervisorError."""

        def poke() -> None:
            raise ConnectionRefusedError(111, "Connection refused")

        waker = Waker(poke, 1.0, max_backoff=30.0)
        assert [2.0, 4.0] == [waker.step(), waker.step()]

    @pytest.mark.parametrize("interval", [0.0, -1.0])
    def test_a_non_positive_interval_is_refused(self, interval):
        """0 means off: the caller makes no Waker at all."""
        with pytest.raises(ValueError, match="wake interval"):
            Waker(FakePoke(), interval)

    def test_the_rpc_poke_is_get_api_version(self):
        """The poke is the cheapest read-only call supervisord has."""
        rpc = FakeRPC()
        rpc_poke(rpc)()  # type: ignore[arg-type]
        assert ["supervisor.getAPIVersion"] == rpc.calls


class TestThread:
    def test_the_thread_pokes_repeatedly_and_stops(self):
        """start() pokes on its own thread until stop(); stop() ends the thread."""
        poke = FakePoke(target=3)
        waker = Waker(poke, 0.01)
        waker.start()
        try:
            assert poke.reached.wait(10.0)
        finally:
            waker.stop(5.0)
        assert waker._thread is not None
        assert (False, True) == (waker._thread.is_alive(), poke.calls >= 3)

    def test_a_crashing_poke_does_not_kill_the_thread(self):
        """An unexpected exception is logged and the thread keeps poking."""
        calls = FakePoke(target=2)

        def poke() -> None:
            calls()
            raise RuntimeError("bug")

        waker = Waker(poke, 0.01, max_backoff=0.01)
        waker.start()
        try:
            assert calls.reached.wait(10.0)
        finally:
            waker.stop(5.0)
        assert calls.calls >= 2


class TestConnectPoke:
    def test_a_connect_poke_is_one_accepted_connection_on_the_unix_socket(self, tmp_path):
        """Each poke connects once and closes; nothing is sent."""
        path = str(tmp_path / "s.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)
            server.listen(4)
            server.settimeout(5.0)
            connect_poke(f"unix://{path}")()
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5.0)
                assert b"" == conn.recv(10)

    def test_a_connect_poke_works_over_tcp(self):
        """http://host:port: the same bare connect on TCP."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(4)
            server.settimeout(5.0)
            port = server.getsockname()[1]
            connect_poke(f"http://127.0.0.1:{port}")()
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5.0)
                assert b"" == conn.recv(10)

    def test_a_missing_socket_is_a_failure_that_backs_off(self, tmp_path):
        """No supervisord: the poke raises OSError and the Waker doubles its wait."""
        waker = Waker(connect_poke(f"unix://{tmp_path}/missing.sock"), 0.2)
        assert [0.4, 0.8] == [waker.step(), waker.step()]
