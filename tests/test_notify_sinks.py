"""Rendering and escaping of each sink, and the --sink URL parser."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listeners.notify.alert import Alert
from listeners.notify.alertmanager import am_alerts
from listeners.notify.escape import header, html, slack
from listeners.notify.smtp import SmtpSink, build_message
from listeners.notify.spec import build_sink, parse_sink
from listeners.notify.webhook import WebhookSink, generic_body, slack_body

EVIL = "web:<img src=x onerror=alert(1)>&\r\nBcc: victim@example.com"


def crash(**kw) -> Alert:
    base = {
        "kind": "crash",
        "host": "h1",
        "group": "web",
        "name": "w_1",
        "time": 100.0,
        "exit_status": 3,
        "stderr_tail": "Traceback <b>\n",
        "key": "k1",
    }
    base.update(kw)
    return Alert(**base)


class TestEscaping:
    def test_html_escapes_markup_and_quotes(self):
        """<, >, & and quotes become entities."""
        assert html('<b a="1">&') == "&lt;b a=&quot;1&quot;&gt;&amp;"

    def test_slack_escapes_only_its_three_characters(self):
        """Slack mrkdwn: &, <, > escaped; * and _ left alone."""
        assert slack("<!channel> & *x*") == "&lt;!channel&gt; &amp; *x*"

    @given(st.text())
    def test_header_text_never_has_a_line_break(self, text):
        """No CR or LF survives into a header, whatever the input."""
        out = header(text)
        assert ("\r" in out, "\n" in out) == (False, False)


class TestSmtpRendering:
    def test_mail_has_subject_recipients_and_a_message_id_from_the_key(self):
        """From/To/Subject are set; Message-ID carries the alert key (duplicates are visible)."""
        msg = build_message(crash(), "cm@example.com", ["a@example.com", "b@example.com"], "[x]")
        assert (
            msg["From"],
            msg["To"],
            msg["Message-ID"],
        ) == ("cm@example.com", "a@example.com, b@example.com", "<k1@supervisor-listeners>")
        assert msg["Subject"].startswith("[x] [h1] web:w_1 crashed")
        assert "Exit status: 3" in msg.get_content()

    @pytest.mark.parametrize("length", [40, 56, 60, 64])
    def test_a_subject_is_one_line_on_the_wire_and_reads_back_without_a_leading_space(self, length):
        """At 70-78 characters the email package folded right after "Subject:"."""
        msg = build_message(crash(name="w" * length), "cm@example.com", ["a@example.com"])
        wire = msg.as_bytes()
        line = next(
            ln
            for ln in wire.split(b"\r\n" if b"\r\n" in wire else b"\n")
            if ln.startswith(b"Subject:")
        )
        assert line.startswith(b"Subject: [h1] web:")
        parsed = email.message_from_bytes(wire, policy=email.policy.default)
        assert str(parsed["Subject"]) == str(msg["Subject"])
        assert not str(parsed["Subject"]).startswith(" ")

    def test_a_process_name_cannot_inject_headers(self):
        """CR/LF in a name stays inside the Subject; no Bcc header appears."""
        msg = build_message(crash(name=EVIL), "cm@example.com", ["a@example.com"])
        assert (msg["Bcc"], msg.as_string().count("\nSubject:")) == (None, 1)

    def test_no_recipient_is_refused(self):
        """An SMTP sink without recipients is a configuration error."""
        with pytest.raises(ValueError, match="recipient"):
            SmtpSink(host="h", port=25, sender="a@b", to=[])


class TestWebhookRendering:
    def test_generic_json_carries_every_field(self):
        """The JSON body holds kind, process, exit status, stderr tail, subject and text."""
        body = generic_body(crash())
        assert (
            body["kind"],
            body["group"],
            body["name"],
            body["exit_status"],
            body["stderr_tail"],
            body["source"],
        ) == ("crash", "web", "w_1", 3, "Traceback <b>\n", "crashmail")
        json.dumps(body)

    def test_slack_text_is_escaped_and_fenced(self):
        """Slack text escapes <, >, & from names and stderr, and a ``` cannot close the block."""
        text = slack_body(crash(name="<!here>", stderr_tail="```& <x>"))["text"]
        assert ("<!here>" in text, "&lt;!here&gt;" in text, "``````" in text) == (
            False,
            True,
            False,
        )

    def test_unknown_format_is_refused(self):
        """Only json and slack are formats."""
        with pytest.raises(ValueError, match="json or slack"):
            WebhookSink("http://x", format="xml")


class TestAlertmanagerRendering:
    def test_a_loop_has_the_labels_the_prometheus_rules_use(self):
        """alertname/host/group/name/kind/severity/source match the rules' labels."""
        (item,) = am_alerts(crash(kind="crash_loop"), now=200.0)
        assert item["labels"] == {
            "alertname": "SupervisorProcessCrashLoop",
            "host": "h1",
            "group": "web",
            "name": "w_1",
            "kind": "crash_loop",
            "severity": "critical",
            "source": "crashmail",
        }

    def test_resolved_uses_the_original_labels_and_ends_now(self):
        """A resolved loop is the same label set with endsAt = now."""
        (item,) = am_alerts(crash(kind="resolved", resolves="crash_loop"), now=200.0)
        assert (
            item["labels"]["alertname"],
            item["labels"]["kind"],
            item["endsAt"],
        ) == ("SupervisorProcessCrashLoop", "crash_loop", "1970-01-01T00:03:20.000Z")

    def test_a_summary_becomes_one_alert_per_item(self):
        """A folded summary is posted as one Alertmanager alert per process and kind."""
        summary = Alert(
            kind="summary",
            host="h",
            time=1.0,
            key="s",
            details={
                "items": [
                    {"kind": "crash", "group": "g", "name": "a", "count": 2, "time": 1.0},
                    {"kind": "fatal", "group": "g", "name": "b", "count": 1, "time": 1.0},
                ]
            },
        )
        items = am_alerts(summary, now=5.0)
        assert [(i["labels"]["alertname"], i["labels"]["name"]) for i in items] == [
            ("SupervisorProcessCrash", "a"),
            ("SupervisorProcessFatal", "b"),
        ]

    def test_fatal_and_memory_restart_names(self):
        """FATAL and memmon restarts map to the agreed alertnames."""
        names = [
            am_alerts(crash(kind=k), now=1.0)[0]["labels"]["alertname"]
            for k in ("fatal", "memory_restart")
        ]
        assert names == ["SupervisorProcessFatal", "SupervisorMemoryRestart"]


class TestSinkSpec:
    @pytest.mark.parametrize("key", ["timeout", "deadline"])
    def test_a_zero_timeout_or_deadline_is_refused_not_taken_as_the_default(self, key):
        """deadline=0 silently became 60 s, timeout=0 10 s: it is an error naming the key."""
        with pytest.raises(ValueError, match=f"{key}: .*greater than zero"):
            parse_sink(f"webhook+http://127.0.0.1:9/x#{key}=0")

    def test_smtp_url_with_starttls_user_and_recipients(self):
        """smtp+starttls://user@host gives port 587, STARTTLS, two recipients, no password."""
        spec = parse_sink("smtp+starttls://alerts@mail.example.com?from=a@x&to=b@x,c@x")
        assert (
            spec.kind,
            spec.target,
            spec.options["tls"],
            spec.options["port"],
            spec.options["username"],
            spec.options["to"],
        ) == ("smtp", "mail.example.com", "starttls", "587", "alerts", "b@x,c@x")

    def test_smtps_defaults_to_465_and_reads_the_password_from_the_environment(self):
        """smtps:// is implicit TLS on 465; password_env names the variable holding it."""
        spec = parse_sink("smtps://u@m.example.com?to=b@x&password_env=PW")
        sink = build_sink(spec, env={"PW": "s3cret"})
        assert (sink.tls, sink.port, sink.password) == ("ssl", 465, "s3cret")

    def test_a_password_in_the_url_is_refused_without_echoing_it(self):
        """smtp://u:pw@host is an error that does not repeat the password."""
        with pytest.raises(ValueError, match="no password") as err:
            parse_sink("smtp://u:hunter2@m.example.com?to=b@x")
        assert "hunter2" not in str(err.value)

    def test_webhook_options_go_after_the_hash(self):
        """The target keeps its query string; format and timeout come from the fragment."""
        spec = parse_sink("webhook+https://h.example.com/x?token=1#format=slack&timeout=3")
        assert (
            spec.target,
            spec.options["format"],
            spec.options["timeout"],
        ) == ("https://h.example.com/x?token=1", "slack", "3")

    def test_env_sink_hides_the_url_from_the_name(self):
        """env:VAR reads the URL from the environment and names the sink after VAR."""
        spec = parse_sink("env:HOOK", env={"HOOK": "slack+https://hooks.slack.com/services/T/B/X"})
        assert (
            spec.kind,
            spec.name,
            spec.options["format"],
        ) == ("webhook", "webhook:HOOK", "slack")

    def test_alertmanager_and_file(self):
        """alertmanager+http://host:port and file:PATH parse to their kinds."""
        am = parse_sink("alertmanager+http://127.0.0.1:9093#hold=2h")
        f = parse_sink("file:/var/log/a.jsonl")
        assert (
            (am.kind, am.name),
            (f.kind, f.target),
        ) == (("alertmanager", "alertmanager:127.0.0.1:9093"), ("file", "/var/log/a.jsonl"))

    @pytest.mark.parametrize(
        "bad",
        [
            "nope",
            "ftp://x",
            "smtp://h",
            "smtp://h?to=a&bogus=1",
            "webhook+https://h#format=xml",
            "file:",
            "sendmail:",
        ],
    )
    def test_bad_values_name_the_problem(self, bad):
        """Every malformed --sink is a ValueError, never a traceback later."""
        with pytest.raises(ValueError, match="sink"):
            parse_sink(bad, env={})

    @given(st.text(max_size=60))
    def test_parser_never_raises_anything_but_value_error(self, text):
        """Arbitrary text either parses or raises ValueError."""
        with contextlib.suppress(ValueError):
            parse_sink(text, env={})


def test_every_alert_kind_has_its_own_alertmanager_name_and_a_doc_row():
    """A kind without an alertname reached Alertmanager as the catch-all SupervisorAlert;
    summaries post one alert per item and resolved ends one, so they need none."""
    from pathlib import Path

    from listeners.notify.alert import KINDS
    from listeners.notify.alertmanager import ALERTNAMES

    named = set(KINDS) - {"summary", "resolved"}
    assert [] == sorted(named - set(ALERTNAMES))
    doc = (Path(__file__).parents[1] / "docs" / "crashmail.md").read_text()
    assert [] == [k for k in KINDS if f"| `{k}` |" not in doc]
    assert [] == [n for n in ALERTNAMES.values() if n not in doc]
