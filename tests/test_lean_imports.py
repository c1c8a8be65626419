"""OpenSSL is loaded only by what uses TLS (about 4 MiB of PSS per listener otherwise).

http.client imports ssl only for HTTPSConnection, and smtplib only for STARTTLS and SMTPS;
neither is needed to talk to supervisord or to a plain local relay. These run in fresh
interpreters, because what a process has imported is the thing under test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.e2e.support import free_port


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    "tool",
    ["crashmail", "memmon", "exporter", "tasks", "health", "httpok", "metrics.web",
     "metrics.actions", "notify.smtp"],
)  # fmt: skip
def test_a_listener_starts_without_openssl(tool: str) -> None:
    """Importing the tool (and with it the supervisord client) loads neither ssl nor
    hashlib's OpenSSL backend."""
    code = f"import sys, listeners.{tool}; print('ssl' in sys.modules, '_hashlib' in sys.modules)"
    assert "False False" == run(code)


def test_the_builtin_digests_are_the_standard_ones() -> None:
    """hashlib without OpenSSL gives the same sha256, sha1 and md5 (alert keys, names)."""
    out = run(
        """
        import listeners, hashlib, sys
        assert '_hashlib' not in sys.modules
        print(hashlib.sha256(b"abc").hexdigest()[:16], hashlib.sha1(b"abc").hexdigest()[:8],
              hashlib.md5(b"abc", usedforsecurity=False).hexdigest()[:8])
        """
    )
    assert "ba7816bf8f01cfea a9993e36 90015098" == out


def test_https_is_still_there_for_whoever_asks() -> None:
    """http.client.HTTPSConnection (and urllib.request's HTTPSHandler) appear on demand."""
    out = run(
        """
        import sys, listeners.core.supervisor, http.client
        before = 'ssl' in sys.modules
        import urllib.request
        print(before, hasattr(urllib.request, 'HTTPSHandler'), http.client.HTTPSConnection.__name__)
        """
    )
    assert "False True HTTPSConnection" == out


class Inbox:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.count += 1
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_a_plain_smtp_sink_sends_without_openssl_and_a_tls_one_gets_it(relay) -> None:
    """tls=none delivers with ssl never loaded; a TLS sink afterwards in the same process
    gets an smtplib with STARTTLS and SMTPS (it is loaded again, with ssl)."""
    inbox, port = relay
    out = run(
        f"""
        import sys
        from listeners.notify.alert import Alert
        from listeners.notify.smtp import SmtpSink, _smtplib
        sink = SmtpSink("127.0.0.1", {port}, "a@example.invalid", ["b@example.invalid"],
                        tls="none")
        sink.send(Alert(kind="crash", host="h", group="g", name="w", key="k1", time=1.0))
        plain = 'ssl' in sys.modules or '_hashlib' in sys.modules
        lib = _smtplib(True)
        print(plain, lib._have_ssl, hasattr(lib, "SMTP_SSL"))
        """
    )
    assert "False True True" == out
    assert 1 == inbox.count
