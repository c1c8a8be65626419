"""example/run.py: the dashboard password reaches supervisord in a 0600 file, never its env."""

from __future__ import annotations

import configparser
import importlib.util
import stat
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_py() -> Any:
    spec = importlib.util.spec_from_file_location("example_run", REPO / "example" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _run_py()


def dashboard_section(stack: Path) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(stack / "run" / "dashboard.conf")
    return dict(parser.items("inet_http_server"))


class TestPrepare:
    def test_password_from_the_environment_goes_to_a_0600_include_only(self, tmp_path):
        """A password given in the environment is in run/dashboard.conf and not in the env."""
        environ = {"SUPERVISOR_DASHBOARD_PASSWORD": "s3cret-pw", "PATH": "/usr/bin"}
        env, where = run.prepare(tmp_path, environ)
        assert "from $SUPERVISOR_DASHBOARD_PASSWORD" == where
        assert [] == [k for k, v in env.items() if "s3cret-pw" in v]
        assert "SUPERVISOR_DASHBOARD_PASSWORD" not in env
        section = dashboard_section(tmp_path)
        assert {"port": "127.0.0.1:8080", "username": "admin", "password": "s3cret-pw"} == section
        assert 0o600 == stat.S_IMODE((tmp_path / "run" / "dashboard.conf").stat().st_mode)

    def test_password_file_wins_and_its_variable_goes_no_further(self, tmp_path):
        """$SUPERVISOR_DASHBOARD_PASSWORD_FILE is read, and neither variable reaches the env."""
        secret = tmp_path / "secret"
        secret.write_text("from-a-file\n")
        environ = {
            "SUPERVISOR_DASHBOARD_PASSWORD_FILE": str(secret),
            "SUPERVISOR_DASHBOARD_PASSWORD": "ignored",
            "SUPERVISOR_DASHBOARD_ADDRESS": "0.0.0.0:8080",
        }
        env, _ = run.prepare(tmp_path, environ)
        assert set() == set(run.SECRET_VARIABLES) & set(env)
        assert "from-a-file" == dashboard_section(tmp_path)["password"]
        assert "0.0.0.0:8080" == dashboard_section(tmp_path)["port"]

    def test_made_up_password_is_kept_between_starts(self, tmp_path):
        """Without a given password one is made up once (0600) and reused at the next start."""
        run.prepare(tmp_path, {})
        first = dashboard_section(tmp_path)["password"]
        run.prepare(tmp_path, {})
        kept = tmp_path / "run" / "dashboard-password"
        assert first == dashboard_section(tmp_path)["password"] == kept.read_text().strip()
        assert len(first) >= 16
        assert 0o600 == stat.S_IMODE(kept.stat().st_mode)

    @pytest.mark.parametrize("bad", ["50%off", "two words", "tab\there"])
    def test_password_the_conf_cannot_hold_is_refused(self, tmp_path, bad):
        """A %, a blank or a control character is refused with a message, no file written."""
        with pytest.raises(run.SetupError, match="choose one without"):
            run.prepare(tmp_path, {"SUPERVISOR_DASHBOARD_PASSWORD": bad})
        assert not (tmp_path / "run" / "dashboard.conf").exists()

    def test_missing_password_file_is_one_clear_error(self, tmp_path):
        """A password file that is not there names the variable and what to do."""
        environ = {"SUPERVISOR_DASHBOARD_PASSWORD_FILE": str(tmp_path / "nope")}
        with pytest.raises(run.SetupError, match=r"PASSWORD_FILE .*mount the file"):
            run.prepare(tmp_path, environ)

    def test_supervisord_conf_includes_the_written_file(self):
        """supervisord.conf has no password of its own and includes run/dashboard.conf."""
        parser = configparser.RawConfigParser()
        parser.read(REPO / "example" / "docker" / "supervisord" / "supervisord.conf")
        assert "run/dashboard.conf" in parser.get("include", "files").split()
        assert run.DASHBOARD_CONF == "dashboard.conf"
        assert not parser.has_section("inet_http_server")


class TestMain:
    def test_bad_password_exits_2_with_one_line(self, tmp_path, monkeypatch, capsys):
        """main() prints one line and returns 2 for a password it cannot use, no traceback."""
        monkeypatch.setenv("SUPERVISOR_DASHBOARD_PASSWORD", "has space")
        monkeypatch.setattr(run, "STACK", tmp_path)
        monkeypatch.setattr(run.shutil, "which", lambda _name: "/bin/false")
        assert 2 == run.main([])
        err = capsys.readouterr().err
        assert 1 == len(err.splitlines())
        assert err.startswith("example/run.py: ")


class TestHealthcheck:
    @pytest.mark.parametrize(
        ("address", "url"),
        [
            ("0.0.0.0:9876", "http://127.0.0.1:9876/metrics"),
            ("127.0.0.1:19000", "http://127.0.0.1:19000/metrics"),
            (":9100", "http://127.0.0.1:9100/metrics"),
            ("[::]:9876", "http://[::1]:9876/metrics"),
            ("10.1.2.3:80", "http://10.1.2.3:80/metrics"),
        ],
    )
    def test_url_follows_exporter_address(self, address, url):
        """The healthcheck asks $EXPORTER_ADDRESS, a wildcard host meaning loopback."""
        assert url == run.metrics_url({"EXPORTER_ADDRESS": address})

    def test_default_is_the_shipped_address(self):
        """Without $EXPORTER_ADDRESS it asks the default 127.0.0.1:9876."""
        assert "http://127.0.0.1:9876/metrics" == run.metrics_url({})

    def test_nothing_listening_is_unhealthy(self, capsys):
        """A closed port gives 1 and one line on stderr."""
        from tests.e2e.support import free_port

        assert 1 == run.healthcheck({"EXPORTER_ADDRESS": f"127.0.0.1:{free_port()}"})
        assert 1 == len(capsys.readouterr().err.splitlines())
