"""The exporter's web config file (exporter-toolkit format) and its basic-auth checker.

Every key the file may hold is either honoured or refused at start with its name (and the line
it is on where one exists): a config that starts and then behaves differently from what it says
is worse than one that does not start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

__all__ = ["BasicAuth", "WebConfig", "load_web_config"]

#: min_version values, by the name of ssl.TLSVersion they stand for (ssl is loaded only for TLS)
TLS_VERSIONS = {"TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}
TOP_KEYS = ("tls_server_config", "basic_auth_users", "http_server_config", "operators")
TLS_KEYS = ("cert_file", "key_file", "min_version")
HTTP_KEYS = ("headers", "http2")
# The response headers exporter-toolkit lets a web config set; the rest belong to the server.
SETTABLE_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
# $2a$/$2b$/$2y$, a two-digit cost, 22 characters of salt and 31 of hash (bcrypt's base64).
_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
AUTH_CACHE_SIZE = 1024
#: bcrypt checks that may wait for the one running: half the request slots, and 32 x 70 ms
#: (cost 10) stays inside Prometheus's 10 s scrape timeout. More are refused at once with
#: AuthBusyError, without bcrypt and whoever the user is (so nothing leaks by timing); without the
#: bound 64 guessing connections held every request slot and locked out even cached scrapes.
AUTH_WAITING = 32
# bcrypt uses the first 72 bytes of a password
BCRYPT_MAX_BYTES = 72


class AuthBusyError(Exception):
    """Too many password checks queued: answer 503, the client retries (no bcrypt ran)."""


@dataclass(frozen=True)
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    #: Extra response headers from ``http_server_config.headers`` (name, value).
    headers: tuple[tuple[str, str], ...] = ()
    #: basic_auth_users names allowed to act from the status page; everyone else views.
    operators: frozenset[str] = frozenset()


def _lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of each mapping key, by its path (``("basic_auth_users", "prom")``)."""
    import yaml

    out: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                out[sub] = key.start_mark.line + 1
                walk(value, sub)

    with contextlib.suppress(yaml.YAMLError):
        walk(yaml.compose(text), ())
    return out


def load_web_config(path: Path | None) -> WebConfig:
    """Read an exporter-toolkit web config; ValueError names the file and the problem."""
    if path is None:
        return WebConfig()
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ValueError(f"cannot read web config {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"web config {path} is not valid YAML: {exc}") from None
    if raw is None:
        return WebConfig()
    if not isinstance(raw, dict):
        raise ValueError(f"web config {path} must be a mapping")  # noqa: TRY004 - user input
    lines = _lines(text)

    def where(*key: str) -> str:
        line = lines.get(key)
        return f"web config {path}" + (f" line {line}" if line else "")

    _refuse_unknown(raw, TOP_KEYS, where, ())
    tls = _tls_context(path, raw.get("tls_server_config"), where)
    users = _users(raw.get("basic_auth_users"), where)
    headers = _http(raw.get("http_server_config"), where)
    operators = _operators(raw.get("operators"), users, where)
    return WebConfig(tls=tls, users=users, headers=headers, operators=operators)


def _operators(raw: Any, users: Mapping[str, Any], where: Callable[..., str]) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise ValueError(
            f"{where('operators')}: operators must be a list of basic_auth_users names,"
            " e.g. operators: [alice]"
        )
    missing = [u for u in raw if u not in users]
    if missing:
        raise ValueError(
            f"{where('operators')}: operators {missing} are not in basic_auth_users;"
            " add them there (with a bcrypt hash) or remove them from operators"
        )
    return frozenset(raw)


def _refuse_unknown(
    conf: Mapping[Any, Any],
    known: tuple[str, ...],
    where: Callable[..., str],
    path: tuple[str, ...],
) -> None:
    for key in conf:
        if key not in known:
            section = f" in {path[-1]}" if path else ""
            raise ValueError(
                f"{where(*path, str(key))}: unsupported key {str(key)!r}{section};"
                f" supported: {', '.join(known)}"
            )


def _tls_context(path: Path, conf: Any, where: Callable[..., str]) -> ssl.SSLContext | None:
    if not conf:
        return None
    if not isinstance(conf, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"{where('tls_server_config')}: tls_server_config must be a mapping"
        )
    _refuse_unknown(conf, TLS_KEYS, where, ("tls_server_config",))
    if not conf.get("cert_file") or not conf.get("key_file"):
        raise ValueError(
            f"{where('tls_server_config')}: tls_server_config needs cert_file and key_file"
        )
    # exporter-toolkit resolves relative paths against the config file's directory.
    cert = path.parent / str(conf["cert_file"])
    key = path.parent / str(conf["key_file"])
    import ssl  # only a TLS config pays for OpenSSL

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = str(conf.get("min_version", "TLS12"))
    if version not in TLS_VERSIONS:
        raise ValueError(
            f"{where('tls_server_config', 'min_version')}: min_version {version!r}"
            " is not TLS12 or TLS13"
        )
    ctx.minimum_version = getattr(ssl.TLSVersion, TLS_VERSIONS[version])
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"web config {path}: cannot load {cert} / {key}: {exc}") from None
    return ctx


def _users(conf: Any, where: Callable[..., str]) -> dict[str, bytes]:
    if not conf:
        return {}
    if not isinstance(conf, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"{where('basic_auth_users')}: basic_auth_users must map user names to hashes"
        )
    users: dict[str, bytes] = {}
    for user, hashed in conf.items():
        match = _BCRYPT_RE.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match[1]) <= 31:
            raise ValueError(
                f"{where('basic_auth_users', str(user))}: the password of user {str(user)!r}"
                " must be a bcrypt hash ($2a$/$2b$/$2y$, cost 04-31, 60 characters);"
                " make one with htpasswd -nBC 10 '' | tr -d ':\\n'"
            )
        users[str(user)] = hashed.encode()
    return users


def _http(conf: Any, where: Callable[..., str]) -> tuple[tuple[str, str], ...]:
    if not conf:
        return ()
    if not isinstance(conf, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"{where('http_server_config')}: http_server_config must be a mapping"
        )
    _refuse_unknown(conf, HTTP_KEYS, where, ("http_server_config",))
    http2 = conf.get("http2", False)
    if not isinstance(http2, bool):
        raise ValueError(  # noqa: TRY004 - user input
            f"{where('http_server_config', 'http2')}: http2 must be true or false"
        )
    # http2 is accepted for configs shared with Go exporters: this server speaks HTTP/1.1,
    # which is what Prometheus scrapes with unless told otherwise.
    headers = conf.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError(  # noqa: TRY004 - user input
            f"{where('http_server_config', 'headers')}: headers must map header names to values"
        )
    out: list[tuple[str, str]] = []
    canonical = {h.lower(): h for h in SETTABLE_HEADERS}
    for name, value in headers.items():
        spot = where("http_server_config", "headers", str(name))
        if str(name).lower() not in canonical:
            raise ValueError(
                f"{spot}: header {str(name)!r} cannot be set;"
                f" settable: {', '.join(SETTABLE_HEADERS)}"
            )
        if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
            raise ValueError(f"{spot}: the value of header {str(name)!r} must be one line of text")
        out.append((canonical[str(name).lower()], value))
    return tuple(out)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    An unknown user is checked against a dummy hash of the same cost, so the answer takes as
    long as for a known user with a wrong password (no user names by timing). bcrypt runs
    under one lock, so guessing clients cost one core at most; successful checks are cached
    by a keyed digest of user and password (as exporter-toolkit does), so a scraper pays
    bcrypt once, not per scrape. At most AUTH_WAITING checks queue for bcrypt; beyond that
    ``check`` raises AuthBusyError at once, so a guessing flood cannot hold the server's request
    slots (a cached scrape never waits).
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        checkpw: Callable[[bytes, bytes], bool] | None = None,
        dummy: bytes | None = None,
    ) -> None:
        self.users = dict(users)
        self._lock = threading.Lock()
        self._waiting = threading.BoundedSemaphore(AUTH_WAITING + 1)  # + the one running
        self.refused_busy = 0
        self._cache: dict[bytes, None] = {}
        self._key = os.urandom(32)  # secrets would load hmac, and OpenSSL with it
        self.dummy = dummy or b""
        if checkpw is None or (self.users and dummy is None):
            import bcrypt

            checkpw = checkpw or bcrypt.checkpw
            if self.users and dummy is None:
                # the dummy costs what the dearest configured hash costs
                cost = max(int(h[4:6]) for h in self.users.values())
                self.dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
        self._checkpw = checkpw

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True)
            user, sep, password = decoded.decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        key = hashlib.blake2b(decoded, key=self._key, digest_size=32).digest()
        if key in self._cache:
            return True
        hashed = self.users.get(user)
        if not self._waiting.acquire(blocking=False):
            self.refused_busy += 1  # too many checks queued (a guessing flood): no bcrypt
            raise AuthBusyError
        try:
            with self._lock:
                try:
                    # bcrypt reads 72 bytes: htpasswd and bcrypt < 5 cut longer passwords
                    # there silently, bcrypt 5 refuses them; cut them, so the same password
                    # opens the same hash on every version
                    secret = password.encode()[:BCRYPT_MAX_BYTES]
                    ok = self._checkpw(secret, hashed or self.dummy)
                except ValueError:  # a hash the config check let through: refuse, never crash
                    ok = False
        finally:
            self._waiting.release()
        if ok and hashed is not None:
            if len(self._cache) >= AUTH_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = None
            return True
        return False
