"""The tasks/ and tasks_disabled/ layout of a supervisord conf: where the dirs are, how to reach it.

Everything in ``listeners.taskfiles`` works on files only (no XML-RPC), so ``supervisor-tasks
check`` and ``--no-apply`` work in an image being built.
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ConfError",
    "Layout",
    "NameRefused",
    "Problem",
    "Section",
    "Task",
    "default_conf",
    "load_layout",
]

DISABLED_DIR_NAME = "tasks_disabled"
ENABLED_DIR_NAME = "tasks"

_PROGRAM_KEYS = frozenset(
    {
        "command",
        "process_name",
        "numprocs",
        "numprocs_start",
        "priority",
        "autostart",
        "autorestart",
        "startsecs",
        "startretries",
        "exitcodes",
        "stopsignal",
        "stopwaitsecs",
        "stopasgroup",
        "killasgroup",
        "user",
        "redirect_stderr",
        "stdout_logfile",
        "stdout_logfile_maxbytes",
        "stdout_logfile_backups",
        "stdout_capture_maxbytes",
        "stdout_events_enabled",
        "stdout_syslog",
        "stderr_logfile",
        "stderr_logfile_maxbytes",
        "stderr_logfile_backups",
        "stderr_capture_maxbytes",
        "stderr_events_enabled",
        "stderr_syslog",
        "environment",
        "directory",
        "umask",
        "serverurl",
    }
)
#: The keys supervisord 4.x reads per section kind (supervisor/options.py); it ignores others.
SECTION_KEYS: Mapping[str, frozenset[str]] = {
    "program": _PROGRAM_KEYS,
    "eventlistener": _PROGRAM_KEYS | {"events", "buffer_size", "result_handler"},
    "fcgi-program": _PROGRAM_KEYS | {"socket", "socket_owner", "socket_mode", "socket_backlog"},
    "group": frozenset({"programs", "priority"}),
}
_PROCESS_KINDS = ("program", "eventlistener", "fcgi-program")

SECTION_RE = re.compile(r"\[(?P<name>[^\]]+)\]")
KEY_RE = re.compile(r"(?P<key>[^=:\s][^=:]*?)\s*[=:]")
FILE_SUFFIX_RE = re.compile(r" in section '(?P<section>[^']+)' \(file: '[^']*'\)$")


class ConfError(Exception):
    """The supervisord conf cannot be used (missing, unreadable, no tasks include)."""


class NameRefused(Exception):  # noqa: N818 - a refusal, reported to the user as such
    """A NAME on the command line is unsafe or matches no task."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file; ``str()`` is the line a user reads."""

    path: Path
    message: str
    line: int | None = None
    section: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        what = f"[{self.section}]" if self.section else ""
        if self.key:
            what += f" {self.key}"
        return f"{where}: {what.strip()}: {self.message}" if what else f"{where}: {self.message}"


@dataclass(frozen=True)
class Section:
    """One ``[kind:name]`` section of a file, with the line of its header and of each key."""

    kind: str
    name: str
    line: int
    key_lines: Mapping[str, int] = field(default_factory=dict)
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


@dataclass(frozen=True)
class Task:
    """One conf file in tasks/ (enabled) or tasks_disabled/ (disabled)."""

    name: str
    path: Path
    enabled: bool
    sections: tuple[Section, ...]
    #: Syntax problems that make supervisord refuse to reread while the file is in tasks/.
    problems: tuple[Problem, ...] = ()

    @property
    def broken(self) -> bool:
        return bool(self.problems)

    @property
    def programs(self) -> list[Section]:
        return [s for s in self.sections if s.kind in _PROCESS_KINDS]

    @property
    def groups(self) -> list[str]:
        """The process groups supervisord makes from this file (what reread/update name)."""
        grouped = {
            p.strip()
            for s in self.sections
            if s.kind == "group"
            for p in re.split(r"[,\s]+", s.values.get("programs", ""))
            if p.strip()
        }
        names = [s.name for s in self.sections if s.kind == "group"]
        names += [s.name for s in self.programs if s.name not in grouped]
        return names

    def autostart_groups(self) -> set[str]:
        """Groups whose every program starts by itself (autostart is true by default)."""
        off = {
            s.name
            for s in self.programs
            if s.values.get("autostart", "true").strip().lower() in {"false", "no", "off", "0"}
        }
        result = set()
        for group in self.groups:
            members = {group}
            for s in self.sections:
                if s.kind == "group" and s.name == group:
                    members = set(re.split(r"[,\s]+", s.values.get("programs", ""))) - {""}
            if not members & off:
                result.add(group)
        return result


@dataclass(frozen=True)
class Layout:
    """Where the conf, its tasks dirs, and its supervisord are."""

    conf: Path
    tasks_dir: Path
    disabled_dir: Path
    pattern: str
    includes: tuple[str, ...]
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def here(self) -> Path:
        return self.conf.parent

    def task_files(self, directory: Path) -> list[Path]:
        if not directory.is_dir():
            return []
        return sorted(
            p for p in directory.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, self.pattern)
        )

    def other_included_files(self) -> list[Path]:
        """Files the conf includes from outside tasks/ (listeners.d/*.conf and the like)."""
        import glob

        found: set[Path] = set()
        for pattern in self.includes:
            for name in glob.glob(pattern):
                path = Path(name)
                if path.parent.resolve() != self.tasks_dir.resolve() and path.is_file():
                    found.add(path)
        return sorted(found)


def default_conf() -> Path | None:
    """The first conf found where supervisorctl looks when -c is not given."""
    from supervisor.options import Options

    for candidate in Options(require_configfile=False).searchpaths:
        if os.path.exists(candidate):
            return Path(candidate)
    return None


def environ_expansions(extra: Mapping[str, str] = {}) -> dict[str, str]:
    expansions = {f"ENV_{k}": v for k, v in os.environ.items()}
    expansions.update({f"ENV_{k}": v for k, v in extra.items()})
    return expansions


def _read_main(conf: Path) -> Any:
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    parser.expansions = environ_expansions()
    try:
        with conf.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfError(f"cannot read the supervisord conf {conf}: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfError(f"cannot parse the supervisord conf {conf}: {exc}") from None
    return parser


def _get(parser: Any, section: str, key: str, here: Path) -> str | None:
    if not parser.has_section(section) or not parser.has_option(section, key):
        return None
    from supervisor.options import expand

    raw = parser.get(section, key)
    expansions = {"here": str(here), "host_node_name": platform.node(), **parser.expansions}
    try:
        return str(expand(raw, expansions, f"{section}.{key}")).strip()
    except ValueError as exc:
        raise ConfError(str(exc)) from None


def _server(parser: Any, here: Path) -> tuple[str, str | None, str | None]:
    """URL and credentials the way supervisorctl finds them, falling back to the servers."""
    url = _get(parser, "supervisorctl", "serverurl", here)
    user = _get(parser, "supervisorctl", "username", here)
    password = _get(parser, "supervisorctl", "password", here)
    sock = _get(parser, "unix_http_server", "file", here)

    # Read the inet port only when it matters: it may be an %(ENV_x)s that only the process
    # starting supervisord sets (the example's dashboard address is one).
    def inet_port() -> str | None:
        return _get(parser, "inet_http_server", "port", here)

    server_section = None
    if url is None and sock:
        url, server_section = f"unix://{sock}", "unix_http_server"
    elif url is None and (port := inet_port()):
        host, _, portnum = port.rpartition(":")
        url = f"http://{host if host not in ('', '*') else '127.0.0.1'}:{portnum}"
        server_section = "inet_http_server"
    elif url is not None:
        if url.startswith("unix://"):
            url = "unix://" + os.path.normpath(os.path.expanduser(url[len("unix://") :]))
            server_section = "unix_http_server" if sock and url == f"unix://{sock}" else None
        elif inet_port():
            server_section = "inet_http_server"
    url = url or "http://localhost:9001"
    if user is None and password is None and server_section:
        user = _get(parser, server_section, "username", here)
        password = _get(parser, server_section, "password", here)
    return url, user, password


_ENV_REF = re.compile(r"%\(ENV_(\w+)\)s")


def _placeholders(
    conf: Path, includes: Iterable[str], disabled_dir: Path, known: Mapping[str, str]
) -> dict[str, str]:
    """A stand-in value for each %(ENV_x)s the confs use that this shell does not set.

    Such variables are set where supervisord starts (the example's dashboard address is one);
    this command only needs the confs to parse, so it checks them with "1", a value every
    supervisord key type accepts (a number, a boolean, a command, a name).
    """
    paths = [conf, *(Path(p) for g in includes for p in glob.glob(g))]
    paths += sorted(disabled_dir.glob("*.conf")) if disabled_dir.is_dir() else []
    missing: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for name in _ENV_REF.findall(text):
            if name not in os.environ and name not in known:
                missing[name] = "1"
    return missing


def load_layout(
    conf: Path, tasks_dir: Path | None = None, disabled_dir: Path | None = None
) -> Layout:
    """Read the supervisord conf: its tasks include, the disabled dir, and its server."""
    conf = conf.absolute()
    if not conf.is_file():
        raise ConfError(f"no supervisord conf at {conf}")
    parser = _read_main(conf)
    here = conf.parent
    env_text = _get(parser, "supervisord", "environment", here) or ""
    environment: dict[str, str] = {}
    if env_text:
        from supervisor.datatypes import dict_of_key_value_pairs

        try:
            environment = dict(dict_of_key_value_pairs(env_text))
        except ValueError as exc:
            raise ConfError(f"{conf}: [supervisord] environment: {exc}") from None
    files = _get(parser, "include", "files", here) or ""
    includes = tuple(os.path.normpath(os.path.join(here, p)) for p in files.split())
    pattern = "*.conf"
    if tasks_dir is None:
        # A glob in a dir named tasks/ wins; else one whose dir has tasks_disabled/ beside it.
        chosen = [p for p in includes if Path(p).parent.name == ENABLED_DIR_NAME]
        if not chosen:
            chosen = [p for p in includes if (Path(p).parent.parent / DISABLED_DIR_NAME).is_dir()]
        if not chosen:
            shown = ", ".join(includes) or "none"
            raise ConfError(
                f"{conf}: no [include] files= glob names a tasks dir (globs: {shown});"
                " pass --tasks-dir"
            )
        if len({Path(p).parent for p in chosen}) > 1:
            raise ConfError(
                f"{conf}: several [include] globs could be the tasks dir ({', '.join(chosen)});"
                " pass --tasks-dir"
            )
        tasks_dir, pattern = Path(chosen[0]).parent, Path(chosen[0]).name
    else:
        tasks_dir = tasks_dir.absolute()
        for p in includes:
            if Path(p).parent == tasks_dir:
                pattern = Path(p).name
    if disabled_dir is None:
        disabled_dir = tasks_dir.parent / DISABLED_DIR_NAME
    url, user, password = _server(parser, here)
    environment.update(_placeholders(conf, includes, disabled_dir, environment))
    return Layout(
        conf=conf,
        tasks_dir=tasks_dir,
        disabled_dir=disabled_dir.absolute(),
        pattern=pattern,
        includes=includes,
        url=url,
        username=user,
        password=password,
        environment=environment,
    )
