"""``--sink`` values: one URL-like string per sink.

    file:/var/log/crashmail.jsonl
    smtp://alerts@mail.example.com:587?tls=starttls&from=a@example.com&to=ops@example.com,b@example.com&password_env=SMTP_PASSWORD
    smtps://mail.example.com?from=...&to=...&password_file=/run/secrets/smtp
    sendmail:?to=ops@example.com&program=/usr/sbin/sendmail -t -i
    webhook+https://hooks.example.com/x#timeout=5
    slack+https://hooks.slack.com/services/T/B/X
    alertmanager+http://127.0.0.1:9093#hold=1h
    env:CRASHMAIL_SLACK_URL          (the value of that variable, for URLs holding a token)

Options of webhook, slack and alertmanager sinks go after ``#`` so the target URL keeps its own
query string. Every sink takes ``name=`` (the outbox records deliveries per name) and
``deadline=`` (the most one delivery attempt may take in all).

Errors never repeat a secret: URL credentials, the path and query of a webhook URL (where
Slack-like hooks keep their token) and the value of an ``env:`` variable are hidden.
SMTP AUTH without TLS is refused unless the URL says ``tls=none`` itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from listeners.core.cli import DEFAULT_SENDMAIL
from listeners.core.units import parse_duration, parse_positive_duration
from listeners.notify.sinks import FileSink, SendmailSink, Sink, redact

# The SMTP, webhook and Alertmanager sinks are imported when a sink of theirs is configured:
# requests, ssl and smtplib cost crashmail several MiB it need not carry (docs/benchmarks.md).

__all__ = ["SINK_FORMS", "SinkSpec", "build_sink", "parse_sink"]

SINK_FORMS = (
    "file:PATH, smtp://[user@]host[:port]?from=..&to=.., smtps://.., sendmail:?to=..,"
    " webhook+https://URL, slack+https://URL, alertmanager+http://host:port, env:VARIABLE"
)
_SMTP_KEYS = {
    "from",
    "to",
    "tls",
    "subject",
    "password_env",
    "password_file",
    "timeout",
    "name",
    "verify",
    "deadline",
}
_HTTP_SCHEMES = {
    f"{kind}+{proto}"
    for kind in ("webhook", "slack", "alertmanager")
    for proto in ("http", "https")
}
_HTTP_KEYS = {"timeout", "name", "format", "hold", "state_hold", "subject", "deadline"}
_SENDMAIL_KEYS = {"to", "program", "from", "subject", "name", "timeout", "deadline"}


@dataclass(frozen=True)
class SinkSpec:
    """A parsed ``--sink``; ``options`` never holds a password, only where to read one."""

    kind: str
    name: str
    target: str
    options: dict[str, str] = field(default_factory=dict)


def _shown(raw: str) -> str:
    """A --sink value as an error may show it: credentials and webhook paths hidden."""
    return repr(redact(raw))


_OPTION_NAME = re.compile(r"[a-z_]{1,20}")


def _options(text: str, allowed: set[str], raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, values in parse_qs(text, keep_blank_values=True).items():
        if key not in allowed:
            # An option name that does not look like one may be a pasted secret: not shown.
            named = repr(key) if _OPTION_NAME.fullmatch(key) else "(not shown)"
            raise ValueError(
                f"invalid sink {_shown(raw)}: unknown option {named};"
                f" accepted: {', '.join(sorted(allowed))}"
            )
        out[key] = ",".join(values)
    return out


def parse_sink(text: str, env: Mapping[str, str] | None = None) -> SinkSpec:
    """Parse one ``--sink`` value; ValueError names the bad value and the accepted forms."""
    env = os.environ if env is None else env
    raw = text.strip()
    if raw.startswith("env:"):
        return _from_env(raw, env)
    return _parse(raw)


def _from_env(raw: str, env: Mapping[str, str]) -> SinkSpec:
    var = raw[4:]
    value = env.get(var)
    if not value:
        raise ValueError(f"invalid sink {raw!r}: environment variable {var} is not set")
    if value.strip().startswith("env:"):
        raise ValueError(f"invalid sink {raw!r}: the value of {var} is another env: reference")
    try:
        spec = _parse(value.strip())
    except ValueError as exc:
        reason = str(exc)
        for shown in sorted({value, value.strip(), redact(value.strip())}, key=len)[::-1]:
            if len(shown) > 3:
                reason = reason.replace(shown, "***")
        raise ValueError(
            f"invalid sink {raw!r} (the value of {var} is not shown): {reason}"
        ) from None
    if spec.kind in ("webhook", "slack", "alertmanager") and "name" not in spec.options:
        # Never derive the name from a URL that may carry a token.
        return SinkSpec(spec.kind, f"{spec.kind}:{var}", spec.target, spec.options)
    return spec


def _parse(raw: str) -> SinkSpec:
    scheme, sep, rest = raw.partition(":")
    scheme = scheme.lower()
    if not sep:
        # Without a KIND: prefix this may be a pasted secret: only a short word is shown.
        shown = _shown(raw) if len(raw) <= 12 else "(not shown)"
        raise ValueError(f"invalid sink {shown}: expected {SINK_FORMS}")
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ValueError(f"invalid sink {raw!r}: file: needs a path")
        return SinkSpec("file", f"file:{path}", path, {})
    if scheme in ("smtp", "smtps", "smtp+starttls"):
        return _smtp(raw, scheme)
    if scheme == "sendmail":
        query = rest.partition("?")[2]
        opts = _options(query, _SENDMAIL_KEYS, raw)
        if not opts.get("to"):
            raise ValueError(f"invalid sink {_shown(raw)}: sendmail needs ?to=ADDRESS[,ADDRESS...]")
        _check_durations(opts, raw)
        return SinkSpec("sendmail", opts.get("name") or "sendmail", "", opts)
    if scheme in _HTTP_SCHEMES:
        return _http(scheme, rest)
    shown_kind = repr(scheme) if _OPTION_NAME.fullmatch(scheme) else "(not shown)"
    raise ValueError(
        f"invalid sink {_shown(raw)}: unknown kind {shown_kind}; expected {SINK_FORMS}"
    )


def _check_durations(opts: dict[str, str], raw: str) -> None:
    for key in ("timeout", "hold", "state_hold", "deadline"):
        if key in opts:
            try:
                # 0 would silently mean the default (60 s, 10 s): no wait at all is refused
                parse = (
                    parse_positive_duration if key in ("timeout", "deadline") else parse_duration
                )
                parse(opts[key])
            except ValueError as exc:
                raise ValueError(f"invalid sink {_shown(raw)}: {key}: {exc}") from None


def _smtp(raw: str, scheme: str) -> SinkSpec:
    parts = urlsplit(raw)
    try:
        hostname, port_given, username = parts.hostname, parts.port, parts.username
        has_password = parts.password is not None
    except ValueError:
        raise ValueError(
            f"invalid sink {_shown(raw)}: the port must be a number;"
            " expected smtp://[user@]host[:port]?from=..&to=.."
        ) from None
    if not hostname:
        raise ValueError(
            f"invalid sink {_shown(raw)}: no host; expected smtp://host:port?from=..&to=.."
        )
    if has_password:
        raise ValueError(
            f"invalid sink {scheme}://{hostname}: put no password in the URL;"
            " use password_env=VARIABLE or password_file=PATH"
        )
    opts = _options(parts.query, _SMTP_KEYS, raw)
    tls = {"smtps": "ssl", "smtp+starttls": "starttls"}.get(scheme, opts.get("tls", "none"))
    if tls not in ("none", "starttls", "ssl"):
        raise ValueError(f"invalid sink {_shown(raw)}: tls must be none, starttls or ssl")
    port: int = port_given or {"ssl": 465, "starttls": 587}.get(tls, 25)
    if not opts.get("to"):
        raise ValueError(f"invalid sink {_shown(raw)}: smtp needs to=ADDRESS[,ADDRESS...]")
    if username and tls == "none" and opts.get("tls") != "none":
        raise ValueError(
            f"invalid sink {scheme}://{unquote(username)}@{hostname}: SMTP AUTH over a plain"
            " connection sends the password in the clear; use smtp+starttls:// (or tls=starttls),"
            " smtps://, or add tls=none to the URL to accept that"
        )
    _check_durations(opts, raw)
    opts.update(tls=tls, port=str(port))
    if username:
        opts["username"] = unquote(username)
    opts.setdefault("from", f"supervisor@{hostname}")
    name = opts.get("name") or f"smtp:{hostname}:{port}"
    return SinkSpec("smtp", name, hostname, opts)


def _http(scheme: str, rest: str) -> SinkSpec:
    kind, _, proto = scheme.partition("+")
    url, _, frag = f"{proto}:{rest}".partition("#")
    parts = urlsplit(url)
    try:
        hostname, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"invalid sink {kind}+{proto}://...: the port must be a number") from None
    if not hostname:
        raise ValueError(f"invalid sink {kind}+{proto}://...: no host")
    shown = f"{kind}+{proto}://{hostname}"
    opts = _options(frag, _HTTP_KEYS, shown)
    if kind == "slack":
        opts["format"] = "slack"
    elif kind == "webhook":
        opts.setdefault("format", "json")
    if opts.get("format", "json") not in ("json", "slack"):
        raise ValueError(f"invalid sink {kind}: format must be json or slack")
    _check_durations(opts, shown)
    suffix = f":{port}" if port else ""
    name = opts.get("name") or f"{kind}:{hostname}{suffix}"
    return SinkSpec("alertmanager" if kind == "alertmanager" else "webhook", name, url, opts)


def _read_password(spec: SinkSpec, env: Mapping[str, str]) -> str | None:
    if "password_env" in spec.options:
        var = spec.options["password_env"]
        value = env.get(var)
        if value is None:
            raise ValueError(f"sink {spec.name}: environment variable {var} is not set")
        return value
    if "password_file" in spec.options:
        path = spec.options["password_file"]
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ValueError(f"sink {spec.name}: cannot read {path}: {exc.strerror}") from None
    return None


def build_sink(
    spec: SinkSpec, *, subject_prefix: str = "", env: Mapping[str, str] | None = None
) -> Sink:
    """Make the sink; reads the SMTP password now (ValueError when it cannot)."""
    env = os.environ if env is None else env
    o = spec.options
    prefix = o.get("subject", subject_prefix)
    timeout = parse_duration(o["timeout"]) if "timeout" in o else None
    sink = _build(spec, prefix, timeout, env)
    if "deadline" in o:
        sink.deadline = parse_duration(o["deadline"])  # type: ignore[attr-defined]
    return sink


def _build(spec: SinkSpec, prefix: str, timeout: float | None, env: Mapping[str, str]) -> Sink:
    o = spec.options
    if spec.kind == "file":
        return FileSink(spec.target, name=spec.name)
    if spec.kind == "smtp":
        from listeners.notify.smtp import SmtpSink

        return SmtpSink(
            host=spec.target,
            port=int(o["port"]),
            sender=o["from"],
            to=[a.strip() for a in o["to"].split(",") if a.strip()],
            tls=o["tls"],
            username=o.get("username"),
            password=_read_password(spec, env),
            subject_prefix=prefix,
            timeout=timeout or 30.0,
            name=spec.name,
            verify=o.get("verify", "1") not in ("0", "false", "no"),
        )
    if spec.kind == "sendmail":
        return SendmailSink(
            to=[a.strip() for a in o["to"].split(",") if a.strip()],
            program=o.get("program", DEFAULT_SENDMAIL),
            sender=o.get("from"),
            subject_prefix=prefix,
            timeout=timeout or 30.0,
            name=spec.name,
        )
    if spec.kind == "webhook":
        from listeners.notify.webhook import WebhookSink

        return WebhookSink(
            spec.target,
            format=o.get("format", "json"),
            timeout=timeout or 10.0,
            subject_prefix=prefix,
            name=spec.name,
        )
    if spec.kind == "alertmanager":
        from listeners.notify.alertmanager import AlertmanagerSink

        return AlertmanagerSink(
            spec.target,
            timeout=timeout or 10.0,
            hold=parse_duration(o["hold"]) if "hold" in o else 3600.0,
            state_hold=parse_duration(o["state_hold"]) if "state_hold" in o else 7 * 86400.0,
            name=spec.name,
        )
    raise ValueError(f"unknown sink kind {spec.kind}")
