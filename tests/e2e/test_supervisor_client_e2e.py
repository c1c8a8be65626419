"""listeners.core.supervisor against a real supervisord: calls, errors, update."""

from __future__ import annotations

import pytest

from listeners.core.supervisor import (
    Connection,
    ReplyUnreadable,
    RPCFault,
    Supervisor,
    SupervisorError,
)
from tests.e2e.support import PYTHON, WORKER, Supervisord, free_port


class TestSupervisorClient:
    def test_reads_processes_and_tails_stderr(self, supervisord):
        """getAllProcessInfo and tailProcessStderrLog work over the unix socket."""
        sup: Supervisord = supervisord(
            f"""
            [program:talk]
            command={PYTHON} {WORKER} crash --after 0.2 --code 3 --stderr "boom ✓"
            startsecs=0
            autorestart=false

            [program:quiet]
            command={PYTHON} {WORKER} steady
            stderr_logfile=NONE
            """
        )
        sup.wait_state("talk:talk", "EXITED")
        assert {"talk", "quiet"} == {i["name"] for i in sup.client.all_process_info()}
        assert 3 == sup.info("talk:talk")["exitstatus"]
        assert "boom ✓" in (sup.client.tail_stderr("talk:talk") or "")
        assert sup.client.tail_stderr("quiet:quiet") is None

    def test_unreachable_socket_names_the_url(self, tmp_path):
        """A missing socket gives an error naming the URL and what to check."""
        url = f"unix://{tmp_path}/nope.sock"
        client = Supervisor(Connection(url=url, timeout=2))
        with pytest.raises(SupervisorError, match="cannot reach supervisord at unix://") as info:
            client.state()
        assert "unix_http_server" in str(info.value)

    def test_another_http_server_at_the_address_is_named_not_a_traceback(self, tmp_path):
        """--server-url at a web server that answers HTML: a SupervisorError that says the
        answer is not XML-RPC and what to check (an ExpatError traceback before), and the
        tools that start with that URL exit with one line."""
        import http.server
        import subprocess
        import sys
        import threading

        class Html(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = b"<html><body>not supervisord</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            with pytest.raises(ReplyUnreadable, match="is not XML-RPC") as info:
                Supervisor(Connection(url=url, timeout=5)).state()
            assert "inet_http_server" in str(info.value)
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
            for argv in (
                ["listeners.health", "-p", "web", "--heartbeat", "1m"],
                ["listeners.memmon", "-a", "16MB"],
            ):
                done = subprocess.run(
                    [sys.executable, "-m", *argv, "--server-url", url],
                    input=b"",
                    capture_output=True,
                    env=env,
                    timeout=60,
                    check=False,
                )
                err = done.stderr.decode()
                assert done.returncode != 0, (argv, err)
                assert "Traceback" not in err, (argv, err)
                assert "is not XML-RPC" in err, (argv, err)
        finally:
            server.shutdown()

    def test_wrong_credentials_over_http_say_401(self, supervisord):
        """Bad credentials on inet_http_server produce a 401 message, not a traceback."""
        port = free_port()
        supervisord(
            "",
            extra_conf=f"""
            [inet_http_server]
            port=127.0.0.1:{port}
            username=admin
            password=right
            """,
        )
        good = Supervisor(
            Connection(url=f"http://127.0.0.1:{port}", username="admin", password="right")  # noqa: S106 - test credential
        )
        assert "RUNNING" == good.state()
        bad = Supervisor(
            Connection(url=f"http://127.0.0.1:{port}", username="admin", password="wrong")  # noqa: S106 - test credential
        )
        with pytest.raises(SupervisorError, match="refused the credentials"):
            bad.state()

    def test_unknown_process_is_a_fault(self, supervisord):
        """BAD_NAME comes back as RPCFault with its code."""
        sup: Supervisord = supervisord("")
        with pytest.raises(RPCFault) as info:
            sup.client.process_info("nope:nope")
        assert 10 == info.value.code

    def test_update_touches_only_the_named_groups(self, supervisord):
        """update(only=...) adds and removes just those groups, like supervisorctl update g."""
        sup: Supervisord = supervisord(
            f"""
            [program:keep]
            command={PYTHON} {WORKER} steady

            [program:gone]
            command={PYTHON} {WORKER} steady
            """
        )
        sup.wait_all("RUNNING")
        keep_pid = sup.info("keep:keep")["pid"]
        text = sup.conf.read_text().replace("[program:gone]", "[program:new]")
        sup.conf.write_text(text)
        done = sup.client.update(only=["gone"])
        assert {"added": [], "changed": [], "removed": ["gone"]} == done
        assert {"keep"} == {i["name"] for i in sup.client.all_process_info()}
        done = sup.client.update()
        assert ["new"] == done["added"]
        sup.wait_state("new:new", "RUNNING")
        assert keep_pid == sup.info("keep:keep")["pid"]
