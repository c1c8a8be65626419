"""crashmail's delivery flags: where alerts go, the outbox that keeps them, how long to retry.

The outbox and its sinks are this wing's; the flags that tune them live beside them, so the
tool's module keeps to its own choices (which processes, detection, flood control).
"""

from __future__ import annotations

import argparse

from listeners.core.cli import arg_type
from listeners.core.units import parse_count, parse_duration

__all__ = ["add_delivery_args"]


def add_delivery_args(parser: argparse.ArgumentParser) -> None:
    """--sink, --outbox, --outbox-keep, --retry-max and --retry-for, in their own group."""
    out = parser.add_argument_group("delivery")
    out.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="URL",
        help="where alerts go; repeatable; the forms are in docs/crashmail.md of the source"
        " tree or sdist (default: a JSON lines file in the state directory)",
    )
    out.add_argument(
        "--outbox",
        metavar="PATH",
        help="SQLite outbox (default: <state dir>/crashmail-outbox-<id>.sqlite, <id> derived"
        " from supervisord's server URL, so each supervisord has its own)",
    )
    out.add_argument(
        "--outbox-keep",
        type=arg_type(parse_count),
        default=10000,
        metavar="N",
        help="delivered messages kept before the oldest are pruned (default: 10000)",
    )
    out.add_argument(
        "--retry-max",
        type=arg_type(parse_duration),
        default=300.0,
        metavar="DURATION",
        help="longest wait between two attempts (default: 5m)",
    )
    out.add_argument(
        "--retry-for",
        type=arg_type(parse_duration),
        default=86400.0,
        metavar="DURATION",
        help="give a delivery up after this long (default: 1d)",
    )
