"""Untrusted text and secrets on their way to a sink: colour codes and bidi controls from
process output, tokens and passwords in --sink values, SMTP AUTH without TLS."""

from __future__ import annotations

import json
import xml.parsers.expat
from typing import Any

import pytest

from listeners import crashmail
from listeners.notify.alert import Alert, render_text, subject
from listeners.notify.enrich import enrich_alert
from listeners.notify.sinks import FileSink
from listeners.notify.smtp import build_message
from listeners.notify.spec import parse_sink
from listeners.notify.webhook import generic_body, slack_body
from tests.fakes import FakeSupervisor

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"


def alert(**kw: Any) -> Alert:
    base: dict[str, Any] = {"kind": "crash", "host": "h", "group": "g", "name": "n", "time": 1.0}
    return Alert(**{**base, **kw})


class TestBidiAndEscapes:
    def test_no_bidi_control_reaches_a_subject(self):
        """U+202E and the other bidi formats are taken out of a subject."""
        a = alert(group=f"web{BIDI}", name=f"gpj.{BIDI[4]}exe")
        assert [c for c in subject(a) if c in BIDI] == []

    @pytest.mark.parametrize(
        "render",
        [
            lambda a: slack_body(a)["text"],
            lambda a: json.dumps(generic_body(a), ensure_ascii=False),
            lambda a: render_text(a)[1],
            lambda a: build_message(a, "a@x", ["b@x"]).get_content(),
        ],
    )
    def test_no_bidi_control_or_colour_code_reaches_any_sink_body(self, render):
        """Slack text, generic JSON, plain text and mail bodies carry no bidi or ESC."""
        a = alert(message=f"boom {BIDI}", stderr_tail=f"\x1b[31mred\x1b[0m {BIDI[4]}x")
        out = render(a)
        assert ([c for c in out if c in BIDI or c == "\x1b"], "red" in out) == ([], True)

    def test_the_file_sink_writes_cleaned_fields(self, tmp_path):
        """The JSON-lines file gets the text without bidi controls or escapes."""
        path = tmp_path / "a.jsonl"
        FileSink(str(path)).send(alert(stderr_tail=f"\x1b[1;31mFatal\x1b[0m{BIDI[4]}"))
        tail = json.loads(path.read_text())["stderr_tail"]
        assert (tail[:5], "\x1b" in tail, BIDI[4] in tail) == ("Fatal", False, False)


class UnparsableTail(FakeSupervisor):
    """supervisord's tailProcessStderrLog reply with an ESC in it: the XML parser gives up."""

    def tail_stderr(self, name: str, length: int = 4096) -> str | None:
        self._record("tail_stderr", name)
        raise xml.parsers.expat.ExpatError("not well-formed (invalid token): line 6, column 20")


class TestColourCodesInStderr:
    def test_an_unparsable_tail_falls_back_to_the_log_file_and_keeps_the_details(self, tmp_path):
        """Exit status, spawn error and the tail (from the file, escapes gone) survive."""
        log = tmp_path / "w.err"
        log.write_bytes(b"starting\n\x1b[31mPHP Fatal error: boom\x1b[0m\n")
        rpc = UnparsableTail(
            {
                "g:n": {
                    "statename": "EXITED",
                    "exitstatus": 255,
                    "spawnerr": "Exited too quickly",
                    "stderr_logfile": str(log),
                }
            }
        )
        out = enrich_alert(alert(), rpc)
        assert (out.exit_status, out.details.get("spawnerr"), out.stderr_tail) == (
            255,
            "Exited too quickly",
            "starting\nPHP Fatal error: boom",
        )

    def test_an_unparsable_tail_without_a_log_file_says_so(self):
        """No readable file: the alert keeps its exit status and says why there is no tail."""
        rpc = UnparsableTail({"g:n": {"statename": "EXITED", "exitstatus": 3}})
        out = enrich_alert(alert(), rpc)
        assert (out.exit_status, "not valid XML" in (out.stderr_tail or "")) == (3, True)


class TestSecretsInErrors:
    @pytest.mark.parametrize(
        ("value", "secret"),
        [
            ("slack+https://hooks.slack.com/services/T0/B0/TOKEN123#bogus=1", "TOKEN123"),
            ("webhook+https://h.example.com/x?token=TOKEN123#format=xml", "TOKEN123"),
            ("smtp://u:hunter22@m.example.com?to=b@x&bogus=1", "hunter22"),
            ("smtp://u:hunter22@m.example.com:notaport?to=b@x", "hunter22"),
            ("webhook+https://h.example.com/TOKEN123#timeout=forever", "TOKEN123"),
            ("htps://h.example.com/TOKEN123", "TOKEN123"),
            ("TOKEN123TOKEN123", "TOKEN123"),
        ],
    )
    def test_a_bad_sink_never_echoes_its_token_or_password(self, value, secret):
        """The error names the problem without the token or inline password."""
        with pytest.raises(ValueError, match="invalid sink") as err:
            parse_sink(value, env={})
        assert secret not in str(err.value)

    @pytest.mark.parametrize(
        "value",
        [
            "slack+https://hooks.slack.com/services/T0/B0/TOKEN123#bogus=1",
            "TOKEN123",
            "smtp://u:TOKEN123@m.example.com?to=b@x",
            "env:HOOK",
        ],
    )
    def test_a_bad_env_sink_never_echoes_the_variable_s_value(self, value):
        """env:VAR with a bad value: the error names VAR, never what it holds."""
        with pytest.raises(ValueError, match="HOOK") as err:
            parse_sink("env:HOOK", env={"HOOK": value})
        assert "TOKEN123" not in str(err.value)


class TestPlainSmtpAuth:
    def test_auth_without_tls_is_refused_with_what_to_do(self):
        """smtp://user@host (no TLS) is an error naming starttls, smtps and tls=none."""
        with pytest.raises(ValueError, match="in the clear") as err:
            parse_sink("smtp://alerts@m.example.com?to=b@x&password_env=PW", env={})
        assert all(w in str(err.value) for w in ("starttls", "smtps://", "tls=none"))

    @pytest.mark.parametrize(
        "value",
        [
            "smtp://alerts@m.example.com?to=b@x&tls=none",
            "smtp://alerts@m.example.com?to=b@x&tls=starttls",
            "smtp+starttls://alerts@m.example.com?to=b@x",
            "smtps://alerts@m.example.com?to=b@x",
            "smtp://m.example.com?to=b@x",
        ],
    )
    def test_tls_or_an_explicit_tls_none_or_no_user_is_accepted(self, value):
        """With TLS, with tls=none said outright, or without a user, the sink parses."""
        assert parse_sink(value, env={}).kind == "smtp"


class TestAtStart:
    def test_crashmail_refuses_plain_smtp_auth_with_one_line_and_exit_2(self, capsys):
        """The refusal happens when crashmail starts: exit 2, one error line, no traceback."""
        with pytest.raises(SystemExit) as done:
            crashmail.main(["--sink", "smtp://alerts@127.0.0.1:25?to=ops@example.com"])
        err = capsys.readouterr().err
        assert (done.value.code, "in the clear" in err, "Traceback" in err) == (2, True, False)

    def test_crashmail_s_error_for_a_bad_env_sink_does_not_print_the_value(
        self, capsys, monkeypatch
    ):
        """--sink env:HOOK with a broken URL: the error names HOOK, not the token it holds."""
        monkeypatch.setenv("HOOK", "slack+https://hooks.slack.com/services/T/B/TOKEN123#x=1")
        with pytest.raises(SystemExit):
            crashmail.main(["--sink", "env:HOOK"])
        err = capsys.readouterr().err
        assert ("HOOK" in err, "TOKEN123" in err) == (True, False)


class TestRedactBarePaths:
    @pytest.mark.parametrize(
        "text",
        [
            "Max retries exceeded with url: /services/T0/B0/tok3n (Caused by X)",
            "Failed to parse headers (url=/services/T0/B0/tok3n): junk",
            "POST https://hooks.example/services/T0/B0/tok3n failed",
        ],
    )
    def test_a_url_path_without_its_host_is_hidden_too(self, text):
        """requests and urllib3 name a URL's path alone: the token in it is hidden."""
        from listeners.core.redact import redact

        assert "tok3n" not in redact(text)
