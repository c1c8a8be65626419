"""The suite's own isolation: every test runs with a private HOME and XDG state dir."""

from __future__ import annotations

import os

from listeners.core.cli import default_state_dir
from tests.conftest import REAL_HOME


class TestPrivateHome:
    def test_home_is_a_temp_dir_not_the_real_one(self, private_home):
        """HOME points at this test's temp dir, never at the home the run started with."""
        assert str(private_home) == os.environ["HOME"]
        assert REAL_HOME != private_home

    def test_crashmails_default_outbox_stays_in_the_temp_home(self, private_home):
        """With default flags, crashmail's state dir is under the test's own home."""
        assert default_state_dir().startswith(str(private_home))
