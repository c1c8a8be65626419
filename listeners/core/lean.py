"""Load the standard library's HTTP client and hashing without OpenSSL, as long as nothing
needs TLS: OpenSSL's libcrypto and libssl cost each listener about 4-5 MiB of PSS.

- ``http.client`` imports ssl only to offer ``HTTPSConnection``, which talking to supervisord
  never needs (its HTTP server has no TLS). It is loaded with ssl hidden, and a module
  ``__getattr__`` loads ssl and runs http.client again in place the first time anyone asks for
  ``HTTPSConnection`` (urllib.request's HTTPSHandler, prometheus_client).
- ``hashlib`` uses OpenSSL's digests when it can; its own builtin sha256, sha1, md5 and blake2
  give the same digests, which is all the listeners use (alert keys, file names, a cache).
  ``hmac`` (the status page's CSRF tokens, smtplib) is loaded over those likewise.

The ssl module itself stays importable: a TLS sink, the exporter's TLS or an https probe
imports it as usual and then pays for OpenSSL, and only then. ``install()`` runs once, from
``listeners/__init__.py``, before any tool module is imported.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["install"]


def _hidden(name: str) -> bool:
    """Make ``import name`` fail (ImportError) until ``_shown``; False if already loaded."""
    if name in sys.modules:
        return False
    sys.modules[name] = None  # type: ignore[assignment]
    return True


def _shown(name: str) -> None:
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]


def install() -> None:
    if "http.client" not in sys.modules and _hidden("ssl"):
        try:
            import http.client
            import xmlrpc.client  # noqa: F401 - loaded now too, while ssl is hidden
        finally:
            _shown("ssl")

        def https_on_demand(name: str) -> Any:
            if name != "HTTPSConnection":
                raise AttributeError(f"module 'http.client' has no attribute {name!r}")
            import ssl  # noqa: F401

            importlib.reload(http.client)
            return http.client.HTTPSConnection

        http.client.__getattr__ = https_on_demand  # type: ignore[method-assign]
    if "hashlib" not in sys.modules and _hidden("_hashlib"):
        try:
            import hashlib  # noqa: F401 - its builtin digests, not OpenSSL's
            import hmac  # noqa: F401 - (and secrets, smtplib) its pure HMAC over those
        finally:
            _shown("_hashlib")
