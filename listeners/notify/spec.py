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
query string. Every sink takes ``name=`` (the outbox records deliveries per name).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from listeners.core.cli import DEFAULT_SENDMAIL
from listeners.core.units import parse_duration
from listeners.notify.alertmanager import AlertmanagerSink
from listeners.notify.sinks import FileSink, SendmailSink, Sink
from listeners.notify.smtp import SmtpSink
from listeners.notify.webhook import WebhookSink

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
}
_HTTP_SCHEMES = {
    f"{kind}+{proto}"
    for kind in ("webhook", "slack", "alertmanager")
    for proto in ("http", "https")
}
_HTTP_KEYS = {"timeout", "name", "format", "hold", "state_hold", "subject"}


@dataclass(frozen=True)
class SinkSpec:
    """A parsed ``--sink``; ``options`` never holds a password, only where to read one."""

    kind: str
    name: str
    target: str
    options: dict[str, str] = field(default_factory=dict)


def _options(text: str, allowed: set[str], raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, values in parse_qs(text, keep_blank_values=True).items():
        if key not in allowed:
            raise ValueError(
                f"invalid sink {raw!r}: unknown option {key!r};"
                f" accepted: {', '.join(sorted(allowed))}"
            )
        out[key] = ",".join(values)
    return out


def parse_sink(text: str, env: Mapping[str, str] | None = None) -> SinkSpec:
    """Parse one ``--sink`` value; ValueError names the bad value and the accepted forms."""
    env = os.environ if env is None else env
    raw = text.strip()
    if raw.startswith("env:"):
        var = raw[4:]
        value = env.get(var)
        if not value:
            raise ValueError(f"invalid sink {raw!r}: environment variable {var} is not set")
        spec = parse_sink(value, env)
        if spec.kind in ("webhook", "slack", "alertmanager") and "name" not in spec.options:
            # Never derive the name from a URL that may carry a token.
            return SinkSpec(spec.kind, f"{spec.kind}:{var}", spec.target, spec.options)
        return spec
    scheme, sep, rest = raw.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"invalid sink {raw!r}: expected {SINK_FORMS}")
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ValueError(f"invalid sink {raw!r}: file: needs a path")
        return SinkSpec("file", f"file:{path}", path, {})
    if scheme in ("smtp", "smtps", "smtp+starttls"):
        return _smtp(raw, scheme)
    if scheme == "sendmail":
        query = rest.partition("?")[2]
        opts = _options(query, {"to", "program", "from", "subject", "name", "timeout"}, raw)
        if not opts.get("to"):
            raise ValueError(f"invalid sink {raw!r}: sendmail needs ?to=ADDRESS[,ADDRESS...]")
        return SinkSpec("sendmail", opts.get("name") or "sendmail", "", opts)
    if scheme in _HTTP_SCHEMES:
        return _http(scheme, rest)
    raise ValueError(f"invalid sink {raw!r}: unknown kind {scheme!r}; expected {SINK_FORMS}")


def _smtp(raw: str, scheme: str) -> SinkSpec:
    parts = urlsplit(raw)
    if not parts.hostname:
        raise ValueError(f"invalid sink {raw!r}: no host; expected smtp://host:port?from=..&to=..")
    opts = _options(parts.query, _SMTP_KEYS, raw)
    tls = {"smtps": "ssl", "smtp+starttls": "starttls"}.get(scheme, opts.get("tls", "none"))
    if tls not in ("none", "starttls", "ssl"):
        raise ValueError(f"invalid sink {raw!r}: tls must be none, starttls or ssl")
    port: int = parts.port or {"ssl": 465, "starttls": 587}.get(tls, 25)
    if not opts.get("to"):
        raise ValueError(f"invalid sink {raw!r}: smtp needs to=ADDRESS[,ADDRESS...]")
    if parts.password is not None:
        raise ValueError(
            f"invalid sink {scheme}://{parts.hostname}: put no password in the URL;"
            " use password_env=VARIABLE or password_file=PATH"
        )
    opts.update(tls=tls, port=str(port))
    if parts.username:
        opts["username"] = unquote(parts.username)
    opts.setdefault("from", f"supervisor@{parts.hostname}")
    name = opts.get("name") or f"smtp:{parts.hostname}:{port}"
    return SinkSpec("smtp", name, parts.hostname, opts)


def _http(scheme: str, rest: str) -> SinkSpec:
    kind, _, proto = scheme.partition("+")
    url, _, frag = f"{proto}:{rest}".partition("#")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"invalid sink {kind}+{proto}://...: no host")
    opts = _options(frag, _HTTP_KEYS, f"{kind}+{proto}://{parts.hostname}")
    if kind == "slack":
        opts["format"] = "slack"
    elif kind == "webhook":
        opts.setdefault("format", "json")
    if opts.get("format", "json") not in ("json", "slack"):
        raise ValueError(f"invalid sink {kind}: format must be json or slack")
    for key in ("timeout", "hold", "state_hold"):
        if key in opts:
            parse_duration(opts[key])
    suffix = f":{parts.port}" if parts.port else ""
    name = opts.get("name") or f"{kind}:{parts.hostname}{suffix}"
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
    if spec.kind == "file":
        return FileSink(spec.target, name=spec.name)
    if spec.kind == "smtp":
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
        return WebhookSink(
            spec.target,
            format=o.get("format", "json"),
            timeout=timeout or 10.0,
            subject_prefix=prefix,
            name=spec.name,
        )
    if spec.kind == "alertmanager":
        return AlertmanagerSink(
            spec.target,
            timeout=timeout or 10.0,
            hold=parse_duration(o["hold"]) if "hold" in o else 3600.0,
            state_hold=parse_duration(o["state_hold"]) if "state_hold" in o else 7 * 86400.0,
            name=spec.name,
        )
    raise ValueError(f"unknown sink kind {spec.kind}")
