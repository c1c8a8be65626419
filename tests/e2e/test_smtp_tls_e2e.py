"""crashmail's SMTP sink over STARTTLS with AUTH, and over implicit TLS, against aiosmtpd.

The server's certificate is made for the test (openssl) and trusted through SSL_CERT_FILE, the
way a private CA is trusted in production: certificate checks stay on.
"""

from __future__ import annotations

import email
import shutil
import ssl
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import REPO, free_port

PASSWORD = "s3cret-for-the-test"  # noqa: S105 - a throwaway for a loopback server


class TlsInbox:
    def __init__(self) -> None:
        self.mails: list[tuple[Message, bool, Any]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.mails.append(
                (
                    email.message_from_bytes(envelope.content),
                    server.transport.get_extra_info("ssl_object") is not None,
                    session.authenticated,
                )
            )
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"alerts"
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is missing: apt-get install openssl"
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


@pytest.fixture
def starttls_server(cert: tuple[Path, Path]) -> Iterator[tuple[Controller, TlsInbox]]:
    inbox = TlsInbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_context(cert),
        require_starttls=True,
        authenticator=check_login,
        auth_require_tls=True,
    )
    controller.start()
    yield controller, inbox
    controller.stop()


@pytest.fixture
def smtps_server(cert: tuple[Path, Path]) -> Iterator[tuple[Controller, TlsInbox]]:
    inbox = TlsInbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        ssl_context=server_context(cert),
        authenticator=check_login,
        # aiosmtpd only counts STARTTLS as TLS for AUTH; here the whole connection is TLS.
        auth_require_tls=False,
    )
    controller.start()
    yield controller, inbox
    controller.stop()


def crashing_host(cert: Path, sink: str, log: Path) -> str:
    return textwrap.dedent(f"""
        [program:once]
        command={PYTHON} {WORKER} crash --after 1.5 --code 5
        startsecs=1
        autorestart=false

        [eventlistener:crashmail]
        command={PYTHON} -m listeners.crashmail --sink '{sink}' --coalesce 1s
        events=PROCESS_STATE
        buffer_size=64
        stderr_logfile={log}
        environment=PYTHONPATH="{REPO}",SSL_CERT_FILE="{cert}",SMTP_PASSWORD="{PASSWORD}"
        """)


class TestSmtpOverTls:
    def test_starttls_with_auth_delivers_and_never_logs_the_password(
        self, supervisord, starttls_server, cert, tmp_path
    ):
        """smtp+starttls:// with password_env: the mail arrives over TLS, authenticated."""
        controller, inbox = starttls_server
        log = tmp_path / "crashmail.err"
        sink = (
            f"smtp+starttls://alerts@127.0.0.1:{controller.port}"
            "?from=crashmail@example.com&to=ops@example.com&password_env=SMTP_PASSWORD"
        )
        sup: Supervisord = supervisord(crashing_host(cert[0], sink, log))
        wait_for(lambda: inbox.mails, 30, what="a mail over STARTTLS")
        mail, over_tls, authenticated = inbox.mails[0]
        assert (True, True) == (over_tls, bool(authenticated))
        assert "once" in mail["Subject"]
        sup.stop()
        assert PASSWORD not in log.read_text()
        assert PASSWORD not in sup.log_text()

    def test_smtps_implicit_tls_delivers(self, supervisord, smtps_server, cert, tmp_path):
        """smtps:// speaks TLS from the first byte and logs in."""
        controller, inbox = smtps_server
        sink = (
            f"smtps://alerts@127.0.0.1:{controller.port}"
            "?from=crashmail@example.com&to=ops@example.com&password_env=SMTP_PASSWORD"
        )
        supervisord(crashing_host(cert[0], sink, tmp_path / "crashmail.err"))
        wait_for(lambda: inbox.mails, 30, what="a mail over SMTPS")
        _, over_tls, authenticated = inbox.mails[0]
        assert (True, True) == (over_tls, bool(authenticated))
