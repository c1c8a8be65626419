"""Flags every listener shares, and argparse glue that turns parser errors into clear messages."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping
from typing import TypeVar

from listeners.core.supervisor import Connection, SupervisorError

__all__ = [
    "add_connection_args",
    "add_logging_args",
    "arg_type",
    "connection_from_args",
    "hostname",
]

T = TypeVar("T")


def arg_type(parse: Callable[[str], T], name: str | None = None) -> Callable[[str], T]:
    """Wrap a parser that raises ValueError so argparse prints its message as is."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name or parse.__name__.removeprefix("parse_")
    return convert


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("supervisord connection")
    group.add_argument(
        "--server-url",
        metavar="URL",
        help="supervisord's XML-RPC address, unix:///path.sock or http://host:port"
        " (default: $SUPERVISOR_SERVER_URL, which supervisord sets for its children)",
    )
    group.add_argument(
        "--username",
        metavar="NAME",
        help="XML-RPC user name (default: $SUPERVISOR_USERNAME)",
    )
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the XML-RPC password (default: $SUPERVISOR_PASSWORD);"
        " there is deliberately no password flag",
    )
    group.add_argument(
        "--rpc-timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="timeout of each XML-RPC call (default: %(default)s)",
    )


def connection_from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """Build the Connection, reporting a bad URL or unreadable password file as a usage error.

    ``env`` stands in for os.environ (tests pass their own).
    """
    try:
        return Connection.from_env(
            env,
            url=args.server_url,
            username=args.username,
            password_file=args.password_file,
            timeout=args.rpc_timeout,
        )
    except (ValueError, SupervisorError) as exc:
        parser.error(str(exc))


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LISTENERS_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default: %(default)s)",
    )


def hostname() -> str:
    return socket.gethostname()
