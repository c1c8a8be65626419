"""superlance's mail path (-m, -s) through a real sendmail-compatible program (msmtp).

crashmail and memmon pipe their mail to the program given with -s, as superlance does. Here
that program is msmtp (Debian's package), relaying to a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator

import pytest

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import REPO, SmtpServer, listener_conf

MSMTP = shutil.which("msmtp")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def sendmail_program(port: int) -> str:
    assert MSMTP, "msmtp is missing: apt-get install msmtp (scripts/system-deps.sh does)"
    return f"{MSMTP} -t -i --host=127.0.0.1 --port={port} --from=alerts@example.com"


class TestSuperlanceMailFlags:
    def test_crashmail_m_and_s_mail_a_crash_through_sendmail(self, supervisord, smtp):
        """-m ADDRESS -s PROGRAM -o PREFIX: one mail per crash, prefixed, to the address."""
        sup: Supervisord = supervisord(
            textwrap.dedent(f"""
            [program:once]
            command={PYTHON} {WORKER} crash --after 1.5 --code 7 --stderr "disk full"
            startsecs=1
            autorestart=false
            """)
            + listener_conf(
                f"-m ops@example.com -s '{sendmail_program(smtp.port)}' -o '[prod]' --coalesce 1s"
            )
        )
        wait_for(lambda: smtp.inbox.mails, 30, what="a mail through msmtp")
        sup.wait_state("once:once", "EXITED")
        mails = smtp.inbox.mails
        assert 1 == len(mails)
        mail = mails[0]
        assert mail["Subject"].startswith("[prod]")
        assert "once" in mail["Subject"]
        assert "ops@example.com" in mail["To"]
        body = mail.get_payload()
        assert "disk full" in body
        assert "7" in body

    def test_memmon_m_and_s_mail_a_restart_through_sendmail(self, supervisord, smtp, tmp_path):
        """memmon -a 16MB -m ADDRESS -s PROGRAM mails the restart of a leaking worker."""
        supervisord(
            textwrap.dedent(f"""
            [program:leaky]
            command={PYTHON} {WORKER} leak --mb-per-s 16 --stop-at-mb 40
            startsecs=0

            [eventlistener:memmon]
            command={PYTHON} -m listeners.memmon -a 16MB --interval 0.5 -m ops@example.com
                -s '{sendmail_program(smtp.port)}' -n memmon-e2e --max-restarts 1/1h
            events=PROCESS_STATE,TICK_5
            buffer_size=64
            stderr_logfile={tmp_path}/memmon.err
            environment=PYTHONPATH="{REPO}"
            """)
        )
        wait_for(lambda: smtp.inbox.mails, 30, what="a restart notice through msmtp")
        mail = smtp.inbox.mails[0]
        assert "leaky" in mail["Subject"]
        assert "ops@example.com" in mail["To"]
        assert "16" in mail.get_payload()
