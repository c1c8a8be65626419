"""supervisord event listeners: memmon, crashmail, exporter and tasks."""

__all__ = ["__version__"]

__version__ = "0.1.0.dev0"
