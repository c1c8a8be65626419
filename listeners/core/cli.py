"""Flags every listener shares, and argparse glue that turns parser errors into clear messages."""

from __future__ import annotations

import argparse
import os
import socket
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

from listeners.core.supervisor import Connection, SupervisorError
from listeners.core.units import parse_positive_duration

__all__ = [
    "ArgumentAdder",
    "HelpFormatter",
    "Parser",
    "add_connection_args",
    "add_logging_args",
    "add_rpc_timeout",
    "arg_type",
    "connection_from_args",
    "hostname",
    "join_dash_values",
]

T = TypeVar("T")

#: superlance's default mail command, shared by every tool that sends through sendmail.
DEFAULT_SENDMAIL = "/usr/sbin/sendmail -t -i"


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME, else ~/.local/state; our subdir."""
    env = dict(os.environ) if env is None else env
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "supervisor-listeners")


class ArgumentAdder(Protocol):
    """A parser or one of its argument groups: what a helper that adds flags needs."""

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action: ...


def arg_type(parse: Callable[[str], T], name: str | None = None) -> Callable[[str], T]:
    """Wrap a parser that raises ValueError so argparse prints its message as is."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name or parse.__name__.removeprefix("parse_")
    return convert


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr: ``prog: error: what (see prog --help)``.

    argparse prints the whole usage first (15 lines for crashmail), and in a supervisord
    ``stderr_logfile`` the one line that says what is wrong ends up under it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but a long word (an events= list, a URL) is never cut in two."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = " ".join(text.split())
        lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
        return "\n".join(indent + line for line in lines)

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


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
    add_rpc_timeout(group)


def add_rpc_timeout(
    group: ArgumentAdder,
    default: float = 10.0,
    help: str = "timeout of each XML-RPC call, e.g. 10, 10s, 500ms (default: 10s)",
) -> None:
    """--rpc-timeout: one parser and one error for every tool; ``default`` differs (tasks 60 s)."""
    group.add_argument(
        "--rpc-timeout",
        metavar="DURATION",
        type=arg_type(parse_positive_duration, "--rpc-timeout"),
        default=default,
        help=help,
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


def join_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Let ``-a -5MB`` reach the size parser (argparse would take -5MB for a flag)."""
    takes_value = {
        s for a in parser._actions if a.nargs is None and a.option_strings for s in a.option_strings
    } - {s for a in parser._actions if a.nargs == 0 for s in a.option_strings}
    known = {s for a in parser._actions for s in a.option_strings}
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if (
            token in takes_value
            and nxt is not None
            and nxt.startswith("-")
            and nxt.split("=")[0] not in known
        ):
            out.append(f"{token}={nxt}" if token.startswith("--") else token + nxt)
            i += 2
            continue
        out.append(token)
        i += 1
    return out
