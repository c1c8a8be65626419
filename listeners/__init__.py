"""supervisord event listeners: memmon, crashmail, exporter, health, httpok and tasks."""

from listeners.core import lean

lean.install()  # before any tool module: the HTTP client and hashing without OpenSSL

__all__ = ["__version__"]

__version__ = "0.1.0.dev0"
