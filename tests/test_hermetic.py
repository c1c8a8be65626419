"""The suite's own isolation: every test runs with a private HOME and XDG state dir."""

from __future__ import annotations

import os

from listeners.core.cli import default_state_dir
from tests.conftest import REAL_HOME, changed, project_files, snapshot


class TestPrivateHome:
    def test_home_is_a_temp_dir_not_the_real_one(self, private_home):
        """HOME points at this test's temp dir, never at the home the run started with."""
        assert str(private_home) == os.environ["HOME"]
        assert REAL_HOME != private_home

    def test_crashmails_default_outbox_stays_in_the_temp_home(self, private_home):
        """With default flags, crashmail's state dir is under the test's own home."""
        assert default_state_dir().startswith(str(private_home))


class TestRealHomeCheck:
    def test_a_write_into_an_existing_state_dir_changes_the_snapshot(self, tmp_path):
        """The session-end check sees a file written, added or removed, not only a new dir."""
        state = tmp_path / "supervisor-listeners"
        assert snapshot(state) is None
        state.mkdir()
        (state / "outbox.sqlite").write_bytes(b"x")
        before = snapshot(state)
        assert before == snapshot(state)
        (state / "outbox.sqlite").write_bytes(b"xy")
        written = snapshot(state)
        assert written != before
        (state / "outbox.sqlite-wal").write_bytes(b"")
        assert snapshot(state) != written

    def test_the_check_covers_state_config_and_cache_but_only_this_projects_names(self, tmp_path):
        """crashmail or supervisor-listeners files in .local/state, .config or .cache count;
        another program's cache, and names of ours deep inside it, do not."""
        home = tmp_path
        before = project_files(home)
        assert {} == before
        (home / ".cache" / "pip" / "http-v2" / "a" / "b").mkdir(parents=True)
        (home / ".cache" / "pip" / "http-v2" / "a" / "b" / "crashmail.whl").write_bytes(b"x")
        (home / ".config" / "chromium").mkdir(parents=True)
        (home / ".config" / "chromium" / "Preferences").write_text("{}")
        assert [] == changed(before, project_files(home))
        ours = [
            home / ".local" / "state" / "supervisor-listeners" / "crashmail-outbox-1.sqlite",
            home / ".local" / "state" / "crashmail-alerts.jsonl",
            home / ".config" / "supervisor-listeners" / "health.conf",
            home / ".cache" / "supervisor-listeners" / "history",
        ]
        for path in ours:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        made = changed(before, project_files(home))
        assert [] == [str(p) for p in ours if str(p) not in made]
        again = project_files(home)
        ours[0].write_bytes(b"xy")
        assert [str(ours[0])] == changed(again, project_files(home))
