"""Event listener pools found in supervisord's own conf, never by command line."""

from __future__ import annotations

import os

import pytest

from listeners.core import pools
from listeners.core.pools import ConfError, listener_groups, supervisord_conf


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class TestListenerGroups:
    def test_eventlistener_sections_through_includes(self, tmp_path):
        """[eventlistener:x] sections of the conf and of every included file are pools."""
        write(
            tmp_path / "supervisord.conf",
            "[supervisord]\n[include]\nfiles = listeners.d/*.conf\n  %(here)s/tasks/*.conf\n"
            "[eventlistener:memmon]\ncommand=x\n",
        )
        write(tmp_path / "listeners.d" / "crashmail.conf", "[eventlistener:crashmail]\n")
        write(
            tmp_path / "tasks" / "queue.conf",
            "[program:crashmail_queue]\ncommand=php artisan queue:work --queue crashmail\n",
        )
        assert {"memmon", "crashmail"} == listener_groups(str(tmp_path / "supervisord.conf"))

    def test_an_unreadable_conf_is_an_error_naming_it(self, tmp_path):
        """A conf that cannot be read raises ConfError with its path."""
        with pytest.raises(ConfError, match=r"nope\.conf"):
            listener_groups(str(tmp_path / "nope.conf"))


class TestSupervisordConf:
    def fake_proc(self, tmp_path, argv: list[str], cwd) -> str:
        proc = tmp_path / "proc"
        (proc / "42").mkdir(parents=True)
        (proc / "42" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        os.symlink(cwd, proc / "42" / "cwd")
        return str(proc)

    def test_the_parents_c_flag_relative_to_its_cwd(self, tmp_path):
        """supervisord -c rel/path is resolved against supervisord's working directory."""
        write(tmp_path / "etc" / "s.conf", "[supervisord]\n")
        proc = self.fake_proc(
            tmp_path, ["/usr/bin/python3", "/bin/supervisord", "-c", "etc/s.conf"], tmp_path
        )
        assert str(tmp_path / "etc" / "s.conf") == supervisord_conf(42, proc)

    def test_a_parent_that_is_not_supervisord(self, tmp_path):
        """Run outside supervisord: a ConfError, so memmon warns and judges everything."""
        proc = self.fake_proc(tmp_path, ["bash"], tmp_path)
        with pytest.raises(ConfError, match="not supervisord"):
            supervisord_conf(42, proc)

    def test_a_conf_in_a_dir_this_user_may_not_enter_says_so_not_not_found(
        self, tmp_path, monkeypatch
    ):
        """memmon as another user than supervisord's: "permission denied", not "not found"."""
        write(tmp_path / "etc" / "s.conf", "[supervisord]\n")
        proc = self.fake_proc(
            tmp_path, ["/usr/bin/python3", "/bin/supervisord", "-c", "etc/s.conf"], tmp_path
        )

        def denied(path, *args, **kwargs):
            if str(path).endswith("s.conf"):
                raise PermissionError(13, "Permission denied", path)
            return os.lstat(path)

        monkeypatch.setattr(pools.os, "stat", denied)
        with pytest.raises(ConfError, match=r"s\.conf' may not be read by this user"):
            supervisord_conf(42, proc)


class TestTheExample:
    def test_the_example_conf_names_its_listener_pools(self):
        """The shipped example: its three listeners are pools, no worker is."""
        from pathlib import Path

        conf = Path(__file__).parents[1] / "example" / "docker" / "supervisord" / "supervisord.conf"
        assert {"memmon", "crashmail", "exporter"} <= listener_groups(str(conf))
        assert "image_resizer" not in listener_groups(str(conf))
