"""Parsers for the sizes, durations and rates that appear in flags.

Every parser raises ValueError with a message that names the bad value and the accepted
forms, so argparse can show it as is.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "duration_words",
    "format_size",
    "parse_count",
    "parse_duration",
    "parse_positive_duration",
    "parse_rate",
    "parse_share",
    "parse_size",
    "parse_status",
]

# superlance memmon treats KB/MB/GB as powers of 1024; we keep that meaning so existing confs
# carry over, and accept the unambiguous KiB/MiB/GiB and bare K/M/G spellings as the same.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(_NUMBER + r"\s*([a-zA-Z]*)")
_DURATION_RE = re.compile(_NUMBER + r"\s*([a-zA-Z]*)")

SIZE_FORMS = "a number with an optional unit: 16MB, 16M, 16MiB, 1.5GB, 512KB, 1048576"
DURATION_FORMS = "a number with an optional unit ms, s, m, h or d: 30, 200ms, 30s, 5m, 1.5h, 1d"


def parse_size(text: str) -> int:
    """Parse ``16MB`` and friends into bytes (binary multiples, as superlance does)."""
    match = _SIZE_RE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: expected {SIZE_FORMS}")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"invalid size {text!r}: must be greater than zero")
    return int(value)


def parse_duration(text: str) -> float:
    """Parse ``5m`` and friends into seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_FORMS}")
    value = float(match.group(1)) * _DURATION_UNITS[unit]
    if not math.isfinite(value):
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_FORMS}")
    return value


def parse_rate(text: str) -> tuple[int, float]:
    """Parse ``COUNT/WINDOW`` such as ``3/5m`` into (3, 300.0)."""
    count_text, sep, window_text = text.partition("/")
    form = "COUNT/WINDOW, for example 3/5m or 5/1h"
    if not sep or not count_text.strip().isdigit():
        raise ValueError(f"invalid rate {text!r}: expected {form}")
    count = int(count_text)
    try:
        window = parse_duration(window_text)
    except ValueError:
        raise ValueError(f"invalid rate {text!r}: expected {form}") from None
    if count < 1 or window <= 0:
        raise ValueError(f"invalid rate {text!r}: count and window must be greater than zero")
    return count, window


def format_size(n: float) -> str:
    """Human form of a byte count, for logs and pages: 16.0MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def duration_words(seconds: float) -> str:
    """``2 hours 5 minutes``, ``45 seconds``: the two largest units, for a person to read."""
    left = max(0, round(seconds))
    if left == 0 and seconds > 0:
        return "under a second"
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, left = divmod(left, size)
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return " ".join(parts[:2]) or "0 seconds"


def parse_count(text: str) -> int:
    """A whole number of at least 1 (``--burst``, ``--tail-lines``, ``failures``)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"invalid count {text!r}: expected a whole number of at least 1")
    return int(text)


def parse_status(text: str) -> int:
    """An HTTP status code, 100 to 599."""
    if not text.strip().isdigit() or not 100 <= int(text) <= 599:
        raise ValueError(f"invalid HTTP status {text!r}: expected a number from 100 to 599")
    return int(text)


def parse_positive_duration(text: str) -> float:
    """A duration above 0 (timeouts, intervals, windows)."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return value


def parse_share(text: str) -> tuple[int, float]:
    """``25%`` -> (0, 0.25), ``3`` -> (3, 0.0): a count or a share of a group (1..100%)."""
    raw = text.strip()
    error = ValueError(
        f"invalid value {text!r}: expected a count of 1 or more (e.g. 2) or a share"
        " of a group between 1% and 100% (e.g. 25%)"
    )
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(int(raw))
    except ValueError:
        raise error from None
    if raw.endswith("%"):
        if not 0 < value <= 1:
            raise error
        return 0, value
    if value < 1:
        raise error
    return int(value), 0.0
