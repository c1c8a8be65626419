"""Every test gets its own HOME and XDG dirs: nothing a test starts writes into the real home.

crashmail's default outbox lives under ``$XDG_STATE_HOME`` (else ``~/.local/state``); a test that
ran it with default flags once left pending alerts there, and the next run delivered them twice.
Child processes (supervisord, the listeners) inherit these variables from ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The real home as the session found it; a session-end check holds it unchanged.
REAL_HOME = Path(os.path.expanduser("~"))
#: Where under a home this project keeps state, config or cache (the XDG defaults).
XDG_DIRS = (Path(".local", "state"), Path(".config"), Path(".cache"))
#: A name with one of these is this project's: the default state dir, and crashmail's
#: outboxes (crashmail-outbox-<id>.sqlite) and alert files wherever a test put them.
OURS = ("supervisor-listeners", "crashmail")
#: How many levels below an XDG dir a name of ours is looked for. pip, uv and browsers keep
#: hashed trees deeper than this; not walking them keeps the check fast and blind to them.
DEPTH = 3


def snapshot(root: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``root`` with its size and mtime, or None when ``root`` does not exist.

    Two snapshots differ when a file was created, removed or written, so the check below sees
    a test writing into a state dir that was already there, not only one creating it.
    """
    if not root.exists():
        return None
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def project_files(home: Path, depth: int = DEPTH) -> dict[str, tuple[int, int]]:
    """This project's files and dirs under ``home``'s XDG dirs, with their size and mtime.

    An entry counts when its name contains one of ``OURS`` within ``depth`` levels of
    ``.local/state``, ``.config`` or ``.cache``; everything below such a dir counts too. Other
    programs' files are never listed, so their caches changing during a run do not matter.
    """
    found: dict[str, tuple[int, int]] = {}

    def visit(folder: Path, level: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = Path(entry.path)
            if any(mark in entry.name.lower() for mark in OURS):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[str(path)] = (st.st_size, st.st_mtime_ns)
                below = snapshot(path) if entry.is_dir(follow_symlinks=False) else None
                found.update({str(path / name): seen for name, seen in (below or {}).items()})
            elif level < depth and entry.is_dir(follow_symlinks=False):
                visit(path, level + 1)

    for xdg in XDG_DIRS:
        visit(home / xdg, 1)
    return found


_BEFORE = project_files(REAL_HOME)


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME, XDG_STATE_HOME, XDG_CONFIG_HOME, XDG_CACHE_HOME point into a temp dir of the test."""
    home = tmp_path_factory.mktemp("home")
    saved = {
        k: os.environ.get(k)
        for k in ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "STATE_DIRECTORY")
    }
    os.environ["HOME"] = str(home)
    os.environ["XDG_STATE_HOME"] = str(home / ".local" / "state")
    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    os.environ.pop("STATE_DIRECTORY", None)
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """The paths created, removed or written between two ``project_files`` listings."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test created, wrote or removed this project's files in the real home.

    (A crashmail of your own with its default outbox, running beside the suite, also trips it.)
    """
    made = changed(_BEFORE, project_files(REAL_HOME))
    if made:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"tests changed this project's files in the real home: {made}", red=True
            )
