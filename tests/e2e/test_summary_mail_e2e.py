"""A flood-control summary as a person gets it: a real supervisord, real crashing workers,
crashmail's SMTP sink and a real SMTP server (aiosmtpd).

Four processes crash one after another within one ``--coalesce`` window with ``--burst 1``:
the first crash is mailed at once, the other three are held and arrive as ONE summary whose
subject names them in the order they failed (``3 processes had repeated alerts: c, a, b``,
not alphabetical) and whose body lists them in that order. The first worker dies of a PHP
memory error printed in ANSI colours: its subject says the size in MiB and carries no escape.
"""

from __future__ import annotations

import calendar
import email
import json
import re
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest

from tests.e2e.support import PYTHON, WORKER, Supervisord, wait_for
from tests.e2e.test_crashmail_e2e import REPO, Inbox, SmtpServer

HOST = "web1"
PREFIX = "[e2e]"
#: the order the processes are made to crash in; the first is mailed at once
ORDER = ["first", "c", "a", "b"]
HELD = ORDER[1:]
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: what the raw mail must never hold: ESC (ANSI sequences), other C0 controls but TAB/LF/CR, DEL
CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

PROGRAMS = textwrap.dedent(r"""
    [program:first]
    command=/bin/sh -c "printf '\033[1;31mPHP Fatal error:  Allowed memory size of 16777216 bytes exhausted (tried to allocate 20480 bytes)\033[0m\n' >&2; sleep 0.2; exit 255"
    autostart=false
    autorestart=false
    startsecs=0
    stderr_logfile=%(here)s/first.err
    """)  # noqa: E501 - one shell line
PROGRAMS += "".join(
    textwrap.dedent(f"""
    [program:{name}]
    command={PYTHON} {WORKER} crash --after 0.2 --code 3 --stderr "{name}: lost the queue"
    autostart=false
    autorestart=false
    startsecs=0
    """)
    for name in HELD
)


class RawInbox(Inbox):
    """The reused aiosmtpd handler, also keeping the bytes exactly as they were received."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.raw.append(bytes(envelope.content))
        return await super().handle_DATA(server, session, envelope)

    def parsed(self) -> list[EmailMessage]:
        with self.lock:
            return [
                cast(EmailMessage, email.message_from_bytes(r, policy=policy.default))
                for r in self.raw
            ]


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.inbox = RawInbox()
    server.start()
    yield server
    server.stop()


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def delivered(outbox: Path) -> list[tuple[str, str, str]]:
    """(kind, sink, state) of every delivery the outbox holds, oldest message first."""
    try:
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT json_extract(m.body, '$.kind'), d.sink, d.state FROM deliveries d"
                " JOIN messages m ON m.id = d.message_id ORDER BY m.id"
            ).fetchall()
    except sqlite3.OperationalError:  # not made yet
        return []
    return [(str(k), str(n), str(st)) for k, n, st in rows]


def crashmail_conf(port: int, outbox: Path) -> str:
    sink = f"smtp://127.0.0.1:{port}?from=crashmail@example.com&to=ops@example.com&tls=none"
    return textwrap.dedent(f"""
    [eventlistener:crashmail]
    command={PYTHON} -m listeners.crashmail --sink '{sink}' --outbox {outbox}
        --host {HOST} -o {PREFIX} --burst 1 --coalesce 4s --loop 10/1m
    events=PROCESS_STATE,REMOTE_COMMUNICATION
    buffer_size=1024
    startsecs=1
    autorestart=true
    stderr_logfile=%(here)s/crashmail.err
    stderr_logfile_maxbytes=0
    environment=PYTHONPATH="{REPO}"
    """)


def content(mail: EmailMessage) -> str:
    """The decoded text of a mail, with the wire's CRLF line ends as LF."""
    return str(mail.get_content()).replace("\r\n", "\n")


def subject(mail: EmailMessage) -> str:
    """The Subject as a mail client shows it. The email package folds a subject that does not
    fit in 78 columns behind ``Subject:`` itself (``Subject:\\r\\n [e2e] ...``), and its parser
    keeps the folding space; clients drop leading white space."""
    return str(mail["Subject"]).lstrip(" ")


def epoch(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


class TestSummaryMail:
    def test_held_crashes_arrive_as_one_summary_naming_them_in_the_order_they_failed(
        self, supervisord, smtp, tmp_path
    ):
        """--burst 1: one crash mail at once, then one summary mail. Its subject names the
        three held processes in crash order, its body lists them in that order with an ISO
        8601 UTC time and the command that shows each one's output; no mail holds an ANSI
        escape or other control character."""
        outbox = tmp_path / "outbox.sqlite"
        sup: Supervisord = supervisord(PROGRAMS + crashmail_conf(smtp.port, outbox))
        err = sup.dir / "crashmail.err"
        sup.wait_state("crashmail:crashmail", "RUNNING", 30)
        wait_for(lambda: log_events(err, "crashmail.started"), 30, what="crashmail started")

        began = time.time()
        for name in ORDER:  # one after another: each has exited before the next starts
            sup.client.start(f"{name}:{name}", wait=False)
            sup.wait_state(f"{name}:{name}", "EXITED", 20)
        inbox: RawInbox = smtp.inbox  # type: ignore[assignment]
        wait_for(lambda: len(inbox.raw) >= 2, 30, what="the crash mail and the summary")
        ended = time.time()

        # crashmail saw the four crashes in order, the first sent at once, the rest held;
        # every recorded alert is in a message by now (no further mail can come).
        recorded = log_events(err, "crashmail.alert_recorded")
        assert [(f"{n}:{n}", n == "first") for n in ORDER] == [
            (r["process"], r["immediate"]) for r in recorded
        ]
        made = log_events(err, "outbox.message_made")
        assert [("crash", 1), ("summary", 3)] == [(m["kind"], m["incidents"]) for m in made]
        mails = inbox.parsed()
        assert ["crash", "summary"] == [m["X-Supervisor-Alert-Kind"] for m in mails]
        crash, summary = mails

        # the summary's subject: how many, the exact wording, the names in crash order
        assert f"{PREFIX} [{HOST}] 3 processes had repeated alerts: c, a, b" == subject(summary)

        # its body: ISO 8601 UTC time of the first held crash, the held alerts in time order
        body = content(summary)
        when = re.search(r"^Time: (\S+)$", body, re.M)
        assert when, body
        assert ISO_UTC.fullmatch(when[1]), body
        assert int(began) <= epoch(when[1]) <= ended, (began, when[1], ended)
        # each held crash: when it happened and its exit status, looked up at delivery
        at = re.findall(r"^\S+: crash x1 at (\S+) \(exit status 3\)$", body, re.M)
        assert 3 == len(at), body
        assert at == sorted(at), body
        assert at[0] == when[1], body
        assert int(began) <= epoch(at[0]) <= epoch(at[-1]) <= ended, (began, at, ended)
        assert (
            textwrap.dedent(f"""\
            Host: {HOST}
            Time: {when[1]}
            Kind: summary
            Count: 3

            c:c: crash x1 at {at[0]} (exit status 3)
            a:a: crash x1 at {at[1]} (exit status 3)
            b:b: crash x1 at {at[2]} (exit status 3)

            See their output:
              supervisorctl tail -f c:c stderr
              supervisorctl tail -f a:a stderr
              supervisorctl tail -f b:b stderr

            Processes:
              c:c
              a:a
              b:b
            """)
            == body
        )
        assert "first" not in body

        # the immediate crash mail: cause in words with the size in MiB, colours gone
        assert (
            f"{PREFIX} [{HOST}] first:first crashed: ran out of PHP memory (memory_limit 16 MiB)"
            == subject(crash)
        )
        text = content(crash)
        crashed = re.search(r"^Time: (\S+)$", text, re.M)
        assert crashed, text
        assert ISO_UTC.fullmatch(crashed[1]), text
        assert int(began) <= epoch(crashed[1]) <= epoch(when[1]), (crashed[1], when[1])
        assert "Exit status: 255" in text
        assert "Cause: ran out of PHP memory (memory_limit 16 MiB)" in text
        assert "See its output: supervisorctl tail -f first:first stderr" in text.splitlines()
        assert "PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted" in text
        assert "[1;31m" not in text, text
        assert "[0m" not in text, text

        # the outbox agrees: two messages, each delivered once to the one sink
        sink = f"smtp:127.0.0.1:{smtp.port}"
        wait_for(
            lambda: (
                [("crash", sink, "delivered"), ("summary", sink, "delivered")] == delivered(outbox)
            ),
            10,
            what="both deliveries marked delivered",
        )

        # nothing raw: no ESC or other control character in any header or body as received
        for raw in inbox.raw:
            assert not CONTROLS.search(raw), raw
        for mail in mails:
            assert "\x1b" not in mail["Subject"]
            assert "\N{REPLACEMENT CHARACTER}" not in mail["Subject"]
