"""Enable and disable tasks: check, move the conf file, apply to supervisord, roll back.

The core of ``supervisor-tasks enable|disable``, shared with the exporter's status page (tools
never import each other). Messages go to ``say`` (results) and ``warn`` (problems), so the CLI
prints them and the page logs them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from listeners.core.names import info_name
from listeners.core.supervisor import SupervisorError, SupervisorRPC
from listeners.taskfiles.check import duplicate_problems, group_error, parser_for, validate_file
from listeners.taskfiles.files import discover, resolve
from listeners.taskfiles.layout import Layout, NameRefused, Problem, Task

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_APPLIED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Outcome",
    "Toggle",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_APPLIED = 3

#: supervisord's words for a conf that names an environment variable it does not have
_ENV_NAME = re.compile(r"'ENV_([A-Za-z_][A-Za-z0-9_]*)'")
_ACTIVE_STATES = {"RUNNING", "STARTING", "STOPPING", "BACKOFF"}
#: supervisord's default stopwaitsecs, and the time it needs beyond it to SIGKILL and reap.
_STOPWAITSECS = 10.0
_STOP_MARGIN = 5.0


@dataclass(frozen=True)
class Outcome:
    """How a toggle ended: an exit code, the tasks chosen, whether supervisord applied it."""

    code: int
    chosen: tuple[Task, ...] = ()
    applied: bool = False
    groups: tuple[str, ...] = ()


class Toggle:
    """One enable or disable of named tasks against one layout and one supervisord."""

    def __init__(
        self,
        layout: Layout,
        client: SupervisorRPC,
        *,
        say: Callable[[str], None],
        warn: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.layout = layout
        self.client = client
        self.say = say
        self.warn = warn
        self.clock = clock
        self.sleep = sleep
        self._written: dict[Path, tuple[int, int, int] | None] = {}  # what this run moved

    def run(self, names: Sequence[str], enable: bool, *, apply: bool = True) -> Outcome:
        """One enable or disable, one at a time per tasks/ directory: two runs at once (two
        shells, or a shell and the status page) would move and roll back each other's files."""
        with self._one_at_a_time():
            return self._run(names, enable, apply=apply)

    @contextlib.contextmanager
    def _one_at_a_time(self) -> Iterator[None]:
        try:
            fd = os.open(self.layout.tasks_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield  # no tasks/ directory: the run says so itself, nothing to guard
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.say(
                    f"waiting for another supervisor-tasks enable/disable on"
                    f" {self.layout.tasks_dir} to finish..."
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _run(self, names: Sequence[str], enable: bool, *, apply: bool) -> Outcome:
        tasks = discover(self.layout)
        try:
            chosen = resolve(names, tasks)
        except NameRefused as exc:
            self.warn(f"error: {exc}")
            return Outcome(EXIT_USAGE)
        verb = "enabled" if enable else "disabled"
        to_move = [t for t in chosen if t.enabled != enable]
        for task in chosen:
            if task.enabled == enable:
                self.say(f"{task.name}: already {verb} ({task.path}); nothing to move")
        leaving = {t.path for t in to_move if not enable}
        broken = [t for t in tasks if t.enabled and t.broken and t.path not in leaving]
        if broken and apply and to_move:
            for task in broken:
                self.warn(
                    f"error: {task.path} is broken ({task.problems[0]}); supervisord cannot"
                    f" reread its conf while it is in {self.layout.tasks_dir}: fix it, or move it"
                    f" out with `supervisor-tasks disable {task.name}`, then run again;"
                    " nothing was moved"
                )
            return Outcome(EXIT_FAILED, tuple(chosen))
        if enable and to_move:
            problems = self._enable_problems(tasks, to_move)
            if problems:
                for problem in problems:
                    self.warn(str(problem))
                self.warn(
                    "error: not enabled: "
                    + ", ".join(t.name for t in to_move)
                    + " (fix the conf, then run again; nothing was moved)"
                )
                return Outcome(EXIT_FAILED, tuple(chosen))
        try:
            moved = self._move_all(to_move, enable)
        except MoveError as exc:
            self.warn(f"error: cannot move: {exc}; supervisord was not changed")
            return Outcome(EXIT_FAILED, tuple(chosen))
        except OSError as exc:
            self.warn(f"error: cannot move: {exc}; nothing was moved{self._access_hint(exc)}")
            return Outcome(EXIT_FAILED, tuple(chosen))
        for task, dest in moved:
            self.say(f"{task.name}: moved {task.path} -> {dest}")
        if not apply:
            self.say("not applied (--no-apply): supervisord picks it up at its next reread")
            return Outcome(EXIT_OK, tuple(chosen))
        code, applied, groups = self._apply(chosen, moved, enable)
        return Outcome(code, tuple(chosen), applied, tuple(groups))

    def _access_hint(self, exc: OSError) -> str:
        if not isinstance(exc, PermissionError):
            return ""
        return (
            f" (run as the owner of {self.layout.tasks_dir} and {self.layout.disabled_dir},"
            " or give this user write access to both)"
        )

    def _apply(
        self, chosen: list[Task], moved: list[tuple[Task, Path]], enable: bool
    ) -> tuple[int, bool, list[str]]:
        """reread + update the groups of ``chosen``; roll ``moved`` back if supervisord refuses."""
        groups = [g for t in chosen for g in t.groups]
        if not groups:
            return EXIT_OK, False, groups
        try:
            self.client.state()
        except SupervisorError as exc:
            if not moved:
                self.warn(f"warning: nothing moved, and supervisord not checked: {exc}")
                return EXIT_OK, False, groups
            self.warn(
                f"warning: files moved but not applied: {exc}. supervisord will pick the change"
                " up when it starts, or run `supervisorctl reread && supervisorctl update`"
            )
            return EXIT_NOT_APPLIED, False, groups
        try:
            if not enable and not self._stopped(chosen, groups):
                return EXIT_NOT_APPLIED, False, groups
            done = self.client.update(only=groups)
            self._verify(groups, present=enable)
        except SupervisorError as exc:
            restored = self._rollback(moved, groups)
            said = str(exc)
            hint = ""
            if "CANT_REREAD" in said:
                env = _ENV_NAME.search(said)
                if env:
                    hint = (
                        f"; a conf file uses %(ENV_{env[1]})s and supervisord's environment has"
                        f" no {env[1]}: set it where supervisord starts, or drop it from the file"
                    )
                else:
                    hint = "; a conf file is broken: `supervisor-tasks check` names it, fix it"
            where = (
                "files moved back"
                if restored
                else "some files were left where they are (see above)"
            )
            self.warn(f"error: supervisord refused the change, {where}: {_short(said)}{hint}")
            return EXIT_FAILED, False, groups
        for kind in ("removed", "added", "changed"):
            if done.get(kind):
                self.say(f"supervisord: {kind} group(s) {', '.join(done[kind])}")
        return EXIT_OK, True, groups

    def _stopped(self, chosen: list[Task], groups: list[str]) -> bool:
        """Stop the groups without waiting on one RPC, then wait as long as their stop takes
        (the longest stopwaitsecs, plus the kill): a stop may outlast --rpc-timeout."""
        live = {
            i["group"] for i in self.client.all_process_info() if i["statename"] in _ACTIVE_STATES
        }
        stopping = [g for g in groups if g in live]
        if not stopping:
            return True
        for group in stopping:
            self.client.stop_group(group, wait=False)
        waits = [
            _float(p.values.get("stopwaitsecs"), _STOPWAITSECS) for t in chosen for p in t.programs
        ]
        budget = max(waits, default=_STOPWAITSECS) + _STOP_MARGIN
        deadline = self.clock() + budget
        while True:
            infos = self.client.all_process_info()
            busy = [i for i in infos if i["group"] in stopping and i["statename"] in _ACTIVE_STATES]
            if not busy:
                return True
            if self.clock() >= deadline:
                names = ", ".join(info_name(i) for i in busy)
                self.warn(
                    f"warning: {names} still stopping after"
                    f" {budget:g}s; the file stays in {self.layout.disabled_dir} and supervisord"
                    " finishes the stop; run the same disable again to remove the group"
                )
                return False
            self.sleep(0.25)

    def _enable_problems(self, tasks: list[Task], to_move: list[Task]) -> list[Problem]:
        """What is wrong with the files about to run: their own conf and clashes with others."""
        problems = []
        for task in to_move:
            problems += validate_file(self.layout, task.path)
            if (self.layout.tasks_dir / task.path.name).exists():
                problems.append(
                    Problem(task.path, f"{self.layout.tasks_dir / task.path.name} already exists")
                )
        if problems:
            return problems
        staying = [t.path for t in tasks if t.enabled]
        incoming = [t.path for t in to_move]
        active = [self.layout.conf, *self.layout.other_included_files(), *staying, *incoming]
        problems = duplicate_problems(active, candidates=incoming)
        if not problems:
            error = group_error(self.layout, parser_for(self.layout, active))
            if error is not None:
                problems.append(Problem(self.layout.conf, f"with these tasks enabled: {error}"))
        return problems

    def _move_all(self, tasks: list[Task], enable: bool) -> list[tuple[Task, Path]]:
        """Rename each file; on any failure put back the ones already moved and re-raise."""
        target = self.layout.tasks_dir if enable else self.layout.disabled_dir
        if tasks:
            target.mkdir(parents=True, exist_ok=True)
        moved: list[tuple[Task, Path]] = []
        try:
            for task in tasks:
                dest = target / task.path.name
                if dest.exists():
                    raise FileExistsError(f"{dest} already exists; refusing to overwrite it")
                _move_no_clobber(task.path, dest)
                self._written[dest] = _identity(dest)
                moved.append((task, dest))
        except OSError as exc:
            stuck = []
            for task, dest in reversed(moved):
                try:
                    _move_no_clobber(dest, task.path)
                except OSError as back:
                    stuck.append(f"{dest} (could not move it back to {task.path}: {back})")
            if stuck:
                # "nothing was moved" would be false: say which files are not where they were
                raise MoveError(f"{exc}; left moved: {', '.join(stuck)}") from exc
            raise
        return moved

    def _verify(self, groups: list[str], *, present: bool) -> None:
        """Raise if supervisord's groups do not match the move (e.g. it runs another conf)."""
        live = {i["group"] for i in self.client.all_process_info()}
        wrong = [g for g in groups if (g in live) != present]
        if wrong:
            how = "still has" if not present else "did not add"
            raise SupervisorError(
                f"after reread and update supervisord {how} group(s) {', '.join(wrong)}; is it"
                f" running with {self.layout.conf}?"
            )

    def _rollback(self, moved: list[tuple[Task, Path]], groups: list[str]) -> bool:
        """Put ``moved`` back; True when every file went back."""
        restored = True
        for task, dest in reversed(moved):
            if self._written.get(dest) != _identity(dest):
                self.warn(f"warning: {dest} changed since it was moved; left where it is")
                restored = False
                continue
            try:
                _move_no_clobber(dest, task.path)
                self.warn(f"{task.name}: moved back {dest} -> {task.path}")
            except FileExistsError:
                self.warn(
                    f"warning: a newer {task.path} was written meanwhile; kept it, and {dest}"
                )
                restored = False
            except OSError as exc:
                self.warn(f"error: could not move {dest} back to {task.path}: {exc}")
                restored = False
        try:
            # Bring supervisord back in line with the restored files (re-add what was removed).
            self.client.update(only=groups)
        except SupervisorError as exc:
            self.warn(f"warning: could not re-sync supervisord after the rollback: {exc}")
        return restored


class MoveError(OSError):
    """A move failed and some files already moved could not be put back."""


def _identity(path: Path) -> tuple[int, int, int] | None:
    """inode, size and mtime: a file replaced or edited since we moved it differs."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _move_no_clobber(src: Path, dst: Path) -> None:
    """Rename that never replaces an existing ``dst`` (FileExistsError instead)."""
    try:
        os.link(src, dst)  # fails with EEXIST, atomically, when dst exists
    except FileExistsError:
        raise
    except OSError:
        if dst.exists():  # no hard links on this filesystem: the check and rename race
            raise FileExistsError(f"{dst} already exists; refusing to overwrite it") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def _short(text: str, limit: int = 300) -> str:
    """supervisord's fault text on one line and cut (a missing ENV_ lists every variable)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"
