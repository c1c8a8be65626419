"""The wake threads: the interval Waker driven by a fake poke and no real clock; the
DeathWatch with real ``sleep`` children killed under it."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from listeners.core.supervisor import SupervisorError
from listeners.core.wake import DeathWatch, Waker, connect_poke, pidfd_unavailable, rpc_poke
from tests.e2e.support import wait_for
from tests.fakes import FakeClock, FakeSupervisor


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
        rpc = FakeSupervisor()
        rpc_poke(rpc)()
        assert ["supervisor.getAPIVersion"] == rpc.methods()


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


# --------------------------------------------------------------------------- DeathWatch


def pidfds() -> dict[int, int]:
    """This process's open pidfds: fd -> the pid it refers to (from /proc/self/fdinfo)."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/self/fdinfo/{entry}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue  # the fd of listdir itself, gone by now
        found[int(entry)] = int(info["Pid"])
    return found


@pytest.fixture
def children() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Spawns real ``sleep`` children; kills and reaps every one at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def watches() -> Iterator[Callable[..., DeathWatch]]:
    """Makes DeathWatches and stops every one at the end (closing their fds)."""
    made: list[DeathWatch] = []

    def make(poke: Callable[[], None], **kw: Any) -> DeathWatch:
        watch = DeathWatch(poke, **kw)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        watch.stop(5.0)


needs_pidfd = pytest.mark.skipif(
    pidfd_unavailable() is not None, reason=f"no pidfds here: {pidfd_unavailable()}"
)


@needs_pidfd
class TestDeathWatch:
    def test_killing_a_watched_child_pokes_at_once_from_the_thread(self, children, watches):
        """A watched process exits: the thread pokes without any interval."""
        poke = FakePoke(target=1)
        watch = watches(poke, repoke=0)
        child = children()
        watch.watch({"g:w": child.pid})
        watch.start()
        wait_for(lambda: watch.held() == {"g:w": child.pid}, 10, what="the pidfd is open")
        assert 0 == poke.calls
        child.kill()
        assert poke.reached.wait(10.0)
        assert (1, 1) == (watch.deaths, watch.pokes)

    def test_a_death_pokes_now_and_once_more_after_repoke(self, children, watches):
        """The second poke comes when the clock passes ``repoke``, then nothing more."""
        clock = FakeClock(100.0)
        poke = FakePoke()
        watch = watches(poke, repoke=0.05, clock=clock)
        child = children()
        watch.watch({"g:w": child.pid})
        watch.check(0)
        child.kill()
        assert 1 == watch.check(10.0)
        assert 1 == poke.calls
        watch.check(0)
        assert 1 == poke.calls  # not yet: the clock has not moved
        clock.now += 0.05
        watch.check(0)
        clock.now += 1.0
        watch.check(0)
        assert 2 == poke.calls

    def test_a_new_pid_for_a_name_replaces_its_pidfd(self, children, watches):
        """A restarted process (new pid) gets a new pidfd; the old one is closed."""
        watch = watches(FakePoke())
        first, second = children(), children()
        before = set(pidfds().values())
        watch.watch({"g:w": first.pid})
        watch.check(0)
        assert {first.pid} == set(pidfds().values()) - before
        watch.watch({"g:w": second.pid})
        watch.check(0)
        assert ({second.pid}, {"g:w": second.pid}) == (
            set(pidfds().values()) - before,
            watch.held(),
        )

    def test_names_that_leave_the_map_and_stop_close_every_fd(self, children, watches):
        """Gone processes lose their pidfd; stop() closes the rest and the pipe."""
        watch = watches(FakePoke())
        a, b = children(), children()
        watch.watch({"g:a": a.pid, "g:b": b.pid})
        watch.check(0)
        watch.watch({"g:b": b.pid})
        watch.check(0)
        held = sorted(pid for pid in pidfds().values() if pid in (a.pid, b.pid))
        assert ({"g:b": b.pid}, [b.pid]) == (watch.held(), held)
        watch.stop()
        assert {} == {fd: pid for fd, pid in pidfds().items() if pid in (a.pid, b.pid)}

    def test_a_pid_already_gone_counts_as_a_death(self, children, watches):
        """A process reaped before its pidfd opens is a death: poke now."""
        poke = FakePoke()
        watch = watches(poke, repoke=0)
        child = children()
        child.kill()
        child.wait(10)
        watch.watch({"g:w": child.pid})
        assert (1, 1, {}) == (watch.check(0), poke.calls, watch.held())

    def test_a_dead_process_is_not_watched_again_until_its_pid_changes(self, children, watches):
        """The zombie of a death already poked for is not reopened by the next map."""
        poke = FakePoke()
        watch = watches(poke, repoke=0)
        dead, alive = children(), children()
        watch.watch({"g:w": dead.pid})
        watch.check(0)
        dead.kill()
        assert 1 == watch.check(10.0)
        # Not reaped yet (a zombie): a new map still naming it must not poke again.
        watch.watch({"g:w": dead.pid, "g:x": alive.pid})
        watch.check(0)
        assert (1, {"g:x": alive.pid}) == (poke.calls, watch.held())

    def test_the_fd_count_is_bounded(self, children, watches):
        """Past ``max_fds`` processes are left unwatched (and a warning logged)."""
        watch = watches(FakePoke(), max_fds=2)
        procs = [children() for _ in range(3)]
        watch.watch({f"g:w{i}": p.pid for i, p in enumerate(procs)})
        watch.check(0)
        assert 2 == len(watch.held())

    def test_a_pidfd_open_error_skips_that_process_only(self, children, watches):
        """EPERM for one pid: that one is unwatched, the others are watched."""
        good, bad = children(), children()

        def opener(pid: int) -> int:
            if pid == bad.pid:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            return os.pidfd_open(pid)

        watch = watches(FakePoke(), pidfd_open=opener)
        watch.watch({"g:good": good.pid, "g:bad": bad.pid})
        assert (0, {"g:good": good.pid}) == (watch.check(0), watch.held())

    def test_a_failing_poke_is_counted_and_the_watch_goes_on(self, children, watches):
        """supervisord unreachable: the failure is counted, later deaths still poke."""
        poke = FakePoke()
        poke.down = True
        watch = watches(poke, repoke=0)
        a, b = children(), children()
        watch.watch({"g:a": a.pid, "g:b": b.pid})
        watch.check(0)
        a.kill()
        watch.check(10.0)
        poke.down = False
        b.kill()
        watch.check(10.0)
        assert (2, 0, 1, 2) == (poke.calls, watch.failures, watch.pokes, watch.deaths)

    def test_an_unchanged_map_does_not_interrupt_the_thread(self, children, watches):
        """watch() with the same map again is a no-op (no wake-up of the poll)."""
        watch = watches(FakePoke())
        child = children()
        watch.watch({"g:w": child.pid})
        watch.check(0)
        watch.watch({"g:w": child.pid})
        assert [] == watch._poll.poll(0)


class TestPidfdAvailability:
    @pytest.mark.parametrize(
        ("err", "text"),
        [(errno.ENOSYS, "Function not implemented"), (errno.EPERM, "Operation not permitted")],
    )
    def test_a_failing_pidfd_open_is_reported_with_its_reason(self, err, text):
        """Old kernel (ENOSYS) or seccomp (EPERM): the reason names the error."""

        def opener(pid: int) -> int:
            raise OSError(err, text)

        reason = pidfd_unavailable(opener)
        assert reason is not None
        assert text in reason

    @needs_pidfd
    def test_this_kernel_has_pidfds_and_the_probe_closes_its_fd(self):
        """The probe opens one pidfd for this process and closes it."""
        before = pidfds()
        assert (None, before) == (pidfd_unavailable(), pidfds())
