"""notify/opening: the outbox opened at start, a lock or a full disk waited out. Real SQLite
files; a fake sleep, and an opener that fails as a full disk does."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from listeners.notify import opening
from listeners.notify.opening import open_claimed, passing_trouble
from listeners.notify.outbox import Outbox, OutboxHealth, OutboxOwnerError, Owner


class TestPassingTrouble:
    @pytest.mark.parametrize(
        "exc",
        [
            sqlite3.OperationalError("database is locked"),
            sqlite3.OperationalError("database or disk is full"),
            sqlite3.OperationalError("disk I/O error"),
            OSError(errno.ENOSPC, "No space left on device"),
        ],
        ids=["locked", "full", "io", "enospc"],
    )
    def test_a_lock_or_a_full_disk_passes(self, exc):
        """Waiting can mend these."""
        assert passing_trouble(exc) is True

    @pytest.mark.parametrize(
        "exc",
        [
            sqlite3.DatabaseError("file is not a database"),
            sqlite3.OperationalError("unable to open database file"),
            PermissionError(errno.EACCES, "Permission denied"),
        ],
        ids=["not-a-db", "cannot-open", "denied"],
    )
    def test_what_waiting_cannot_mend_does_not(self, exc):
        """These need a person: they are raised at once."""
        assert passing_trouble(exc) is False


class TestOpenClaimed:
    def test_a_full_disk_is_waited_out_said_once_and_announced(self, tmp_path, monkeypatch):
        """Two tries fail as a full disk does; the third opens. Two sleeps, failing then well."""
        path = str(tmp_path / "o.sqlite")
        fails = [2]

        def opener(p: str, on_health: object = None) -> Outbox:
            if fails[0]:
                fails[0] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return Outbox(p)

        monkeypatch.setattr(opening, "Outbox", opener)
        slept: list[float] = []
        told: list[OutboxHealth] = []
        box = open_claimed(path, Owner("unix:///s.sock"), told.append, sleep=slept.append)
        assert isinstance(box, Outbox)
        assert (slept, [h.failing for h in told]) == ([5.0, 5.0], [True, False])
        assert "full" in told[0].error

    def test_an_outbox_of_another_supervisord_is_refused_at_once(self, tmp_path):
        """The owner check is no passing trouble: raised, no sleep."""
        path = str(tmp_path / "o.sqlite")
        Outbox(path).claim(Owner("unix:///a.sock"))
        slept: list[float] = []
        with pytest.raises(OutboxOwnerError):
            open_claimed(path, Owner("unix:///b.sock"), lambda h: None, sleep=slept.append)
        assert [] == slept

    def test_a_file_that_is_not_a_database_is_raised_at_once(self, tmp_path):
        """Garbage where the outbox should be: an error for a person, not a wait."""
        path = tmp_path / "o.sqlite"
        path.write_bytes(b"not sqlite at all" * 100)
        slept: list[float] = []
        with pytest.raises(sqlite3.DatabaseError):
            open_claimed(str(path), Owner("unix:///s.sock"), lambda h: None, sleep=slept.append)
        assert [] == slept
