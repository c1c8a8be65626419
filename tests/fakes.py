"""Fakes shared by unit tests: a clock, an in-memory supervisord RPC, an inline worker, events,
the listener's stdin/stdout as in-memory streams, and a notify sink that records."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from listeners.core import protocol
from listeners.core.protocol import (
    Event,
    ProcessStateEvent,
    format_event,
    parse_event,
    parse_header,
)
from listeners.core.supervisor import NOT_RUNNING, RPCFault, SupervisorError
from listeners.notify.alert import Alert
from listeners.notify.sinks import SinkError


def make_event(eventname: str, payload: str, serial: int = 1) -> Event:
    raw = format_event(eventname, payload, serial=serial)
    head, _, body = raw.partition("\n")
    return parse_event(parse_header(head), body)


def run_listener(handler: protocol.Handler, stdin: str, **options: Any) -> tuple[int, str]:
    """protocol.run over in-memory streams: (exit code, all that was written to stdout)."""
    out = io.StringIO()
    code = protocol.run(handler, io.StringIO(stdin), out, install_signals=False, **options)
    return code, out.getvalue()


def state_event(
    state: str, name: str, group: str | None = None, pid: int | None = None, **extra: Any
) -> ProcessStateEvent:
    tokens = [f"processname:{name}", f"groupname:{group or name}", "from_state:RUNNING"]
    if pid is not None:
        tokens.append(f"pid:{pid}")
    tokens += [f"{k}:{int(v) if isinstance(v, bool) else v}" for k, v in extra.items()]
    e = make_event(f"PROCESS_STATE_{state}", " ".join(tokens))
    assert isinstance(e, ProcessStateEvent)
    return e


class FakeClock:
    """A clock that moves only when told: call it to read; ``sleep``/``advance`` move it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    advance = sleep


class InlineWorker:
    """background.Worker's interface, running each call at once on the caller's thread."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.append(getattr(fn, "__name__", "?"))
        fn(*args)

    def close(self, timeout: float = 10.0) -> None:
        """Nothing runs later, so nothing is left to wait for."""


class HeldWorker(InlineWorker):
    """background.Worker's interface that only records what it was given (nothing runs)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.append(getattr(fn, "__name__", "?"))


class FakeSupervisor:
    """The subset of listeners.core.supervisor.Supervisor the listeners use, in memory.

    ``processes`` maps ``group:name`` to a getProcessInfo dict; ``infos`` reads and replaces them
    as a list. ``down`` makes every call fail as an unreachable supervisord would; ``fail`` makes
    one method raise. ``calls`` records ``(method, args)``; ``methods()`` just the names.
    """

    url = "unix:///fake.sock"

    def __init__(
        self,
        processes: dict[str, dict[str, Any]] | list[dict[str, Any]] | None = None,
        *,
        answers: dict[str, Any] | None = None,
        instant_stop: bool = False,
    ) -> None:
        #: a stop leaves the process STOPPED at once (no STOPPING in between), as seen by a
        #: caller that polls process_info after stopProcess
        self.instant_stop = instant_stop
        self.processes: dict[str, dict[str, Any]] = {}
        if isinstance(processes, list):
            self.infos = processes
        else:
            self.processes = processes or {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: dict[str, Exception] = {}
        self.down = False
        #: stderr tails by ``group:name``; a process's own ``stderr_tail`` key also works
        self.stderr: dict[str, str] = {}
        #: supervisord's own log, for ``supervisor.readLog`` (None: the ``answers`` entry)
        self.log: str | None = None
        self.answers = {"supervisor.getAPIVersion": "3.0", **(answers or {})}

    @property
    def infos(self) -> list[dict[str, Any]]:
        return list(self.processes.values())

    @infos.setter
    def infos(self, infos: list[dict[str, Any]]) -> None:
        self.processes = {f"{i['group']}:{i['name']}": i for i in infos}

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def acts(self) -> list[tuple[str, str]]:
        """The stops and starts asked for, in order: ``("stop", "g:a")``."""
        return [(m, str(args[0])) for m, args in self.calls if m in ("stop", "start")]

    def bus(self, kind: str) -> list[dict[str, Any]]:
        """The messages of one kind published on supervisord's bus, decoded."""
        sent = [json.loads(args[1]) for m, args in self.calls if m == "send_remote_comm"]
        return [d for d in sent if d.get("kind") == kind]

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if self.down:
            raise SupervisorError("cannot reach supervisord")
        if method in self.fail:
            raise self.fail[method]

    def call(self, method: str, *args: Any) -> Any:
        self._record(method, *args)
        if method == "supervisor.readLog" and self.log is not None:
            return self.log
        return self.answers.get(method)

    def state(self) -> str:
        self._record("state")
        return "RUNNING"

    def version(self) -> str:
        self._record("version")
        return "4.3.0"

    def identification(self) -> str:
        self._record("identification")
        return "host-a"

    def all_process_info(self) -> list[dict[str, Any]]:
        self._record("all_process_info")
        return [dict(p) for p in self.processes.values()]

    def process_info(self, name: str) -> dict[str, Any]:
        self._record("process_info", name)
        return dict(self.processes[name])

    def stop(self, name: str, *, wait: bool = False) -> bool:
        self._record("stop", name)
        info = self.processes.get(name)
        if info is None or info["statename"] not in ("RUNNING", "STARTING"):
            return False
        info["statename"] = "STOPPED" if self.instant_stop else "STOPPING"
        return True

    def start(self, name: str, *, wait: bool = False) -> bool:
        self._record("start", name)
        if name in self.processes:
            self.processes[name]["statename"] = "STARTING"
        return True

    def signal(self, name: str, signal: str | int) -> bool:
        self._record("signal", name, signal)
        return True

    def send_remote_comm(self, type_: str, data: str) -> None:
        self._record("send_remote_comm", type_, data)

    def tail_stderr(self, name: str, length: int = 4096) -> str | None:
        self._record("tail_stderr", name)
        if name in self.stderr:
            return self.stderr[name]
        return self.processes.get(name, {}).get("stderr_tail")

    def stop_group(self, group: str, *, wait: bool = True) -> None:
        self._record("stop_group", group, wait)

    def update(self, only: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Nothing to reread in memory: every group is as it was."""
        self._record("update", sorted(only or []))
        return {"added": [], "changed": [], "removed": []}


class RecordingSink:
    """A notify sink that keeps what it is sent in ``got``. Its first ``fail`` sends raise
    SinkError("down"); with ``error`` every send raises that instead."""

    def __init__(self, name: str = "rec", *, fail: int = 0, error: Exception | None = None) -> None:
        self.name = name
        self.fail = fail
        self.error = error
        self.got: list[Alert] = []

    def send(self, alert: Alert) -> None:
        if self.error is not None:
            raise self.error
        if self.fail:
            self.fail -= 1
            raise SinkError("down")
        self.got.append(alert)


def not_running(method: str) -> RPCFault:
    return RPCFault(NOT_RUNNING, "NOT_RUNNING", method)


def outbox_counts(path: str) -> dict[str, int]:
    """What an outbox file holds: open incidents, messages, deliveries by state (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {
            "incidents_open": db.execute(
                "SELECT COUNT(*) FROM incidents WHERE message_id IS NULL"
            ).fetchone()[0],
            "messages": db.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
        }
        for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[f"deliveries_{state}"] = n
        return out
    finally:
        db.close()
