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
WATCHED = (REAL_HOME / ".local" / "state" / "supervisor-listeners",)


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


_BEFORE = {p: snapshot(p) for p in WATCHED}


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test created, wrote or removed listener state in the real home.

    (A crashmail of your own with its default outbox, running beside the suite, also trips it.)
    """
    made = [str(p) for p in WATCHED if snapshot(p) != _BEFORE[p]]
    if made:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"tests wrote listener state into the real home: {made}", red=True)
