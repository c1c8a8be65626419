"""Actions from the status page: who may act, the CSRF token, the Origin check, the RPC calls.

Read-only unless the web config names ``operators:`` (users of ``basic_auth_users``). An action
is a POST form carrying a token that is the HMAC of the user name under a secret drawn at each
start of the exporter, so a page from an earlier run or another user is refused; the request's
Origin (or Referer) must be this server. The RPC calls run on a worker thread of their own
(a restart waits for the stop), never on the HTTP thread or the event loop. Every action is
logged and announced on supervisord's bus (``bus.ACTIONS_TYPE``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from listeners.core import bus
from listeners.core.background import Worker
from listeners.core.log import get_logger
from listeners.core.names import split_name
from listeners.core.supervisor import SupervisorError
from listeners.metrics.history import History
from listeners.metrics.page import ACTIONS, Viewer

__all__ = ["TASK_ACTIONS", "ActionRPC", "Actions", "Csrf", "Refused", "TaskControl"]

log = get_logger("listeners.exporter.actions")


class Refused(Exception):  # noqa: N818 - an answer, not a bug
    """An action the page will not perform: ``code`` (403, 400, 404) and a reason to show."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ActionRPC(Protocol):
    """The part of ``Supervisor`` that actions use; tests pass a fake."""

    def start(self, name: str, *, wait: bool = False) -> bool: ...
    def stop(self, name: str, *, wait: bool = False) -> bool: ...
    def send_remote_comm(self, type_: str, data: str) -> None: ...


class TaskControl(Protocol):
    """supervisor-tasks' enable/disable, given by the exporter (wings do not import wings)."""

    def names(self) -> list[tuple[str, bool, str]]:
        """Every task, whether it is enabled, and what is wrong with its file ("" if nothing)."""
        ...

    def toggle(self, name: str, enable: bool) -> tuple[bool, str]:
        """Enable or disable one task, applied to supervisord: (ok, what happened)."""
        ...


TASK_ACTIONS = ("enable", "disable")


class Csrf:
    """Tokens bound to a user and to this run of the exporter."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)

    def token(self, user: str) -> str:
        return hmac.new(self._secret, b"csrf\0" + user.encode(), hashlib.sha256).hexdigest()

    def check(self, user: str, token: str) -> bool:
        return hmac.compare_digest(self.token(user), token)


def expected_origin(host_header: str | None, tls: bool) -> str | None:
    if not host_header:
        return None
    return f"{'https' if tls else 'http'}://{host_header}"


class Actions:
    """Decides whether a request may act and performs the action off the HTTP thread."""

    def __init__(
        self,
        rpc: ActionRPC,
        *,
        operators: frozenset[str],
        auth: bool,
        tls: bool = False,
        history: History | None = None,
        self_name: str | None = None,
        csrf: Csrf | None = None,
        worker: Worker | None = None,
        host: str | None = None,
        run: Callable[[Callable[[], None]], None] | None = None,
        tasks: TaskControl | None = None,
    ) -> None:
        self.rpc = rpc
        self.tasks = tasks
        self.operators = operators
        self.auth = auth
        self.tls = tls
        self.history = history
        self.self_name = self_name
        self.csrf = csrf or Csrf()
        self.host = host or socket.gethostname()
        if run is None:
            runner = worker or Worker("exporter-actions")
            run = runner.submit
        self._run = run
        # (action, process or task) queued or under way: a double click asks once
        self._in_flight: set[tuple[str, str]] = set()
        self._flight_lock = threading.Lock()

    def _claim(self, action: str, target: str) -> tuple[str, str]:
        """Refused(409) while the same action on the same target is queued or running."""
        key = (action, target)
        with self._flight_lock:
            if key in self._in_flight:
                raise Refused(409, f"{action} of {target} is already under way: wait for it")
            self._in_flight.add(key)
        return key

    def _queue(self, key: tuple[str, str], work: Callable[[], None]) -> None:
        """Run ``work`` on the actions worker; the claim on ``key`` ends with it."""

        def run() -> None:
            try:
                work()
            finally:
                with self._flight_lock:
                    self._in_flight.discard(key)

        try:
            self._run(run)
        except BaseException:
            with self._flight_lock:
                self._in_flight.discard(key)
            raise

    def viewer(self, user: str | None) -> Viewer:
        """An operator gets a token (and so forms); anyone else views."""
        if self.auth and user is not None and user in self.operators:
            return Viewer(user, self.csrf.token(user))
        return Viewer(user)

    def authorize(self, user: str | None, headers: Mapping[str, str], token: str) -> str:
        """The operator's name, or Refused(403) saying why not."""
        if not self.auth or not self.operators:
            raise Refused(
                403,
                "the status page is read-only: actions need a web config with basic_auth_users"
                " and an operators: list",
            )
        if user is None or user not in self.operators:
            raise Refused(
                403, f"user {user!r} is a viewer: only users listed under operators: may act"
            )
        want = expected_origin(headers.get("Host"), self.tls)
        origin = headers.get("Origin")
        referer = headers.get("Referer")
        if origin is not None:
            # "null" comes from sandboxed frames and privacy redirects: not this page.
            if origin != want:
                raise Refused(403, f"cross-origin request refused: Origin {origin} is not {want}")
        elif referer is not None:
            if want is None or not (referer == want or referer.startswith(want + "/")):
                raise Refused(403, "cross-origin request refused: the Referer is not this page")
        else:
            raise Refused(403, "request refused: it carries neither Origin nor Referer")
        if not token or not self.csrf.check(user, token):
            raise Refused(403, "missing or invalid CSRF token: reload the page and try again")
        return user

    def perform(
        self,
        user: str | None,
        headers: Mapping[str, str],
        form: Mapping[str, str],
        known: set[str],
    ) -> str:
        """Check and queue one action; returns what was done, for the answer page."""
        operator = self.authorize(user, headers, form.get("csrf", ""))
        action, name = form.get("action", ""), form.get("process", "")
        if action in TASK_ACTIONS:
            return self._task(operator, action, form.get("task", ""))
        if action not in ACTIONS:
            raise Refused(400, f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
        if name not in known:
            raise Refused(404, f"no process {name!r} in supervisord")
        if name == self.self_name:
            raise Refused(403, "the exporter does not act on itself: use supervisorctl")
        key = self._claim(action, name)
        log.info("exporter.action", user=operator, action=action, process=name)
        if self.history is not None:
            self.history.record(name, "action", f"{action} requested by {operator} (status page)")
        self._queue(key, lambda: self._execute(operator, action, name))
        return f"{action} of {name} requested"

    def _task(self, user: str, action: str, task: str) -> str:
        tasks = self.tasks
        if tasks is None:
            raise Refused(400, "tasks are not managed here: start the exporter with --tasks-conf")
        if task not in {name for name, _, _ in tasks.names()}:
            raise Refused(404, f"no task {task!r} in tasks/ or tasks_disabled/")
        key = self._claim(action, f"task {task}")
        log.info("exporter.action", user=user, action=action, task=task)

        def run() -> None:
            ok, text = tasks.toggle(task, action == "enable")
            log.info(
                "exporter.task_toggled", user=user, action=action, task=task, ok=ok, result=text
            )
            if ok:
                self._announce(user, action, task, task)

        self._queue(key, run)
        return f"{action} of task {task} requested"

    def _announce(self, user: str, action: str, group: str, name: str) -> None:
        message = bus.ActionPerformed(
            host=self.host, group=group, name=name, action=action, user=user
        )
        try:
            self.rpc.send_remote_comm(bus.ACTIONS_TYPE, bus.encode(message))
        except SupervisorError as exc:
            log.info("exporter.action_not_announced", error=str(exc))

    def _execute(self, user: str, action: str, name: str) -> None:
        try:
            if action in ("restart", "stop"):
                self.rpc.stop(name, wait=action == "restart")
            if action in ("restart", "start"):
                self.rpc.start(name, wait=False)
        except SupervisorError as exc:
            log.warning(
                "exporter.action_failed", user=user, action=action, process=name, error=str(exc)
            )
            if self.history is not None:
                self.history.record(name, "action", f"{action} by {user} failed: {exc}")
            return
        group, proc = split_name(name)
        self._announce(user, action, group, proc)
