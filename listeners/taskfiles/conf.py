"""The tasks/ and tasks_disabled/ layout of a supervisord conf, read and checked offline.

Everything here works on files only (no XML-RPC), so ``supervisor-tasks check`` and
``--no-apply`` work in an image being built. Values are checked with supervisord's own parser
(``supervisor.options``) so "valid" means what supervisord will accept; what supervisord
silently accepts but is a mistake (unknown keys, a section defined twice, which configparser
merges without a word) is checked here.
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
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
    "discover",
    "duplicate_problems",
    "group_error",
    "parser_for",
    "load_layout",
    "resolve",
    "scan_sections",
    "validate_file",
    "validate_layout",
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

_SECTION_RE = re.compile(r"\[(?P<name>[^\]]+)\]")
_KEY_RE = re.compile(r"(?P<key>[^=:\s][^=:]*?)\s*[=:]")
_FILE_SUFFIX_RE = re.compile(r" in section '(?P<section>[^']+)' \(file: '[^']*'\)$")


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


# ---------------------------------------------------------------------------- the main conf


def default_conf() -> Path | None:
    """The first conf found where supervisorctl looks when -c is not given."""
    from supervisor.options import Options

    for candidate in Options(require_configfile=False).searchpaths:
        if os.path.exists(candidate):
            return Path(candidate)
    return None


def _environ_expansions(extra: Mapping[str, str] = {}) -> dict[str, str]:
    expansions = {f"ENV_{k}": v for k, v in os.environ.items()}
    expansions.update({f"ENV_{k}": v for k, v in extra.items()})
    return expansions


def _read_main(conf: Path) -> Any:
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    parser.expansions = _environ_expansions()
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


# ---------------------------------------------------------------------------- task files


def scan_sections(path: Path, text: str) -> tuple[list[Section], list[Problem]]:
    """Sections with the line of every header and key, and the syntax problems found."""
    problems: list[Problem] = []
    raw: list[tuple[str, int, dict[str, int]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t" and raw:
            continue  # a continuation line of the previous value
        match = _SECTION_RE.match(stripped)
        if match:
            raw.append((match["name"].strip(), number, {}))
            continue
        key = _KEY_RE.match(stripped)
        if key is None:
            problems.append(Problem(path, f"cannot parse line {stripped!r}", line=number))
        elif not raw:
            problems.append(Problem(path, "key before any [section] header", line=number))
        else:
            raw[-1][2].setdefault(key["key"].strip().lower(), number)
    values = _values(path, text)
    sections = []
    for title, number, keys in raw:
        kind, _, name = title.partition(":")
        sections.append(Section(kind.strip(), name.strip(), number, keys, values.get(title, {})))
    return sections, problems


def _values(path: Path, text: str) -> dict[str, dict[str, str]]:
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    try:
        parser.read_string(text, str(path))
    except configparser.Error:
        return {}  # scan_sections and validate_file report the syntax error with its line
    return {s: dict(parser.items(s)) for s in parser.sections()}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfError(f"{path} is not UTF-8 text: {exc}") from None


def discover(layout: Layout) -> list[Task]:
    """Every task in both dirs, enabled first, each list sorted by name."""
    tasks = []
    for directory, enabled in ((layout.tasks_dir, True), (layout.disabled_dir, False)):
        for path in layout.task_files(directory):
            try:
                sections, _ = scan_sections(path, _read_text(path))
            except ConfError:
                sections = []
            tasks.append(Task(_stem(path), path, enabled, tuple(sections)))
    return tasks


def _stem(path: Path) -> str:
    return path.name[: -len(".conf")] if path.name.endswith(".conf") else path.stem


def resolve(names: Sequence[str], tasks: Sequence[Task]) -> list[Task]:
    """Tasks named by file stem or program name; refuse paths and names that match nothing."""
    known = sorted({t.name for t in tasks} | {p.name for t in tasks for p in t.programs})
    chosen: list[Task] = []
    for name in names:
        if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
            raise NameRefused(
                f"refusing {name!r}: NAME is a task or program name, not a path"
                f" (known: {', '.join(known) or 'none'})"
            )
        matches = [t for t in tasks if t.name == name]
        if not matches:
            matches = [t for t in tasks if any(p.name == name for p in t.programs)]
        if not matches:
            raise NameRefused(
                f"no task or program named {name!r} (known: {', '.join(known) or 'none'})"
            )
        if len(matches) > 1:
            where = ", ".join(str(t.path) for t in matches)
            raise NameRefused(
                f"{name!r} is ambiguous: it is in {where}; run `supervisor-tasks check`"
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


# ---------------------------------------------------------------------------- validation


def _server_options(layout: Layout) -> Any:
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.here = str(layout.here)
    options.configfile = str(layout.conf)
    options.environ_expansions = _environ_expansions(layout.environment)
    return options


def parser_for(layout: Layout, files: Iterable[Path], drop: tuple[str, str] | None = None) -> Any:
    """A parser holding ``files`` as supervisord includes them (each with its own %(here)s)."""
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    parser.expansions = _environ_expansions(layout.environment)
    for path in files:
        parser.read(str(path))
        parser.expand_here(str(path.parent.absolute()))
    if drop is not None and parser.has_section(drop[0]):
        parser.remove_option(*drop)
    return parser


def group_error(layout: Layout, parser: Any) -> str | None:
    """supervisord's own verdict on the program/group sections of ``parser``; None if fine."""
    try:
        _server_options(layout).process_groups_from_parser(parser)
    except ValueError as exc:
        return str(exc)
    return None


def validate_file(layout: Layout, path: Path) -> list[Problem]:
    """Everything supervisord would refuse in one task file, plus keys it would ignore."""
    try:
        text = _read_text(path)
    except ConfError as exc:
        return [Problem(path, str(exc))]
    sections, problems = scan_sections(path, text)
    seen: dict[str, int] = {}
    for section in sections:
        if section.title in seen:
            problems.append(
                Problem(
                    path,
                    f"defined twice in this file (first on line {seen[section.title]});"
                    " supervisord would merge the two silently",
                    line=section.line,
                    section=section.title,
                )
            )
        seen.setdefault(section.title, section.line)
        allowed = SECTION_KEYS.get(section.kind)
        if allowed is None:
            problems.append(
                Problem(
                    path,
                    "a task file may only hold [program:x], [group:x], [eventlistener:x] or"
                    " [fcgi-program:x] sections",
                    line=section.line,
                    section=section.title,
                )
            )
            continue
        if not section.name:
            problems.append(
                Problem(path, "section has no name", line=section.line, section=section.title)
            )
        for key, line in section.key_lines.items():
            if key not in allowed:
                hint = _close_key(key, allowed)
                problems.append(
                    Problem(
                        path,
                        "unknown key (supervisord would ignore it)"
                        + (f"; did you mean {hint}?" if hint else ""),
                        line=line,
                        section=section.title,
                        key=key,
                    )
                )
    if any(p.line and "cannot parse" in p.message for p in problems):
        return problems
    try:
        parser = parser_for(layout, [path])
    except configparser.Error as exc:
        lineno: int | None = getattr(exc, "lineno", None)
        errors = getattr(exc, "errors", None)
        if lineno is None and errors:
            lineno = int(errors[0][0])
        return [*problems, Problem(path, f"supervisord cannot parse it: {exc}", line=lineno)]
    error = group_error(layout, parser)
    if error is not None:
        problems.append(_locate(layout, path, sections, error))
    return problems


def _close_key(key: str, allowed: Iterable[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return close[0] if close else None


def _locate(layout: Layout, path: Path, sections: list[Section], error: str) -> Problem:
    """Name the key behind supervisord's error: the first whose removal changes the error."""
    match = _FILE_SUFFIX_RE.search(error)
    message = error[: match.start()] if match else error
    section_title = match["section"] if match else None
    candidates = [s for s in sections if section_title in (None, s.title)]
    for section in candidates:
        for key, line in section.key_lines.items():
            other = group_error(layout, parser_for(layout, [path], drop=(section.title, key)))
            if other != error:
                return Problem(path, message, line=line, section=section.title, key=key)
    if candidates and section_title is not None:
        missing = "command" if "does not specify a command" in message else None
        return Problem(path, message, line=candidates[0].line, section=section_title, key=missing)
    return Problem(path, message)


def _declared(files: Iterable[Path]) -> list[tuple[str, Path, int, str]]:
    """(group or program name, file, line, section) for each process-making section."""
    found = []
    for path in files:
        try:
            sections, _ = scan_sections(path, _read_text(path))
        except ConfError:
            continue
        found += [
            (s.name, path, s.line, s.title) for s in sections if s.kind in SECTION_KEYS and s.name
        ]
    return found


def duplicate_problems(
    active: Sequence[Path], candidates: Sequence[Path] | None = None
) -> list[Problem]:
    """Names defined more than once among ``active`` files (configparser merges them silently).

    With ``candidates``, only clashes that involve one of them are reported.
    """
    by_name: dict[str, list[tuple[Path, int, str]]] = {}
    for name, path, line, title in _declared(active):
        by_name.setdefault(name, []).append((path, line, title))
    problems = []
    wanted = None if candidates is None else {p.absolute() for p in candidates}
    for name, places in sorted(by_name.items()):
        if len(places) < 2:
            continue
        for path, line, title in places:
            if wanted is not None and path.absolute() not in wanted:
                continue
            others = ", ".join(f"{p}:{n}" for p, n, _ in places if (p, n) != (path, line))
            problems.append(
                Problem(
                    path,
                    f"duplicate name {name!r}: also defined in {others}",
                    line=line,
                    section=title,
                )
            )
    return problems


def validate_layout(layout: Layout, enabled: Sequence[Path] | None = None) -> list[Problem]:
    """``check``: every file in both dirs, duplicates among what runs, clashes across dirs.

    ``enabled`` replaces the files of tasks/ (what they will be after a move).
    """
    in_tasks = layout.task_files(layout.tasks_dir) if enabled is None else list(enabled)
    disabled = [
        p for p in layout.task_files(layout.disabled_dir) if p.absolute() not in set(in_tasks)
    ]
    problems = []
    for path in [*in_tasks, *disabled]:
        problems += validate_file(layout, path)
    active = [layout.conf, *layout.other_included_files(), *in_tasks]
    problems += duplicate_problems(active)
    enabled_names = {name: (p, n) for name, p, n, _ in _declared(in_tasks)}
    for name, path, line, title in _declared(disabled):
        if name in enabled_names:
            other, other_line = enabled_names[name]
            problems.append(
                Problem(
                    path,
                    f"{name!r} is also defined in the enabled {other}:{other_line};"
                    " enabling this file would clash",
                    line=line,
                    section=title,
                )
            )
    problems += duplicate_problems(disabled)
    stems = {p.name for p in in_tasks}
    problems += [
        Problem(p, f"a file of the same name is in {layout.tasks_dir}")
        for p in disabled
        if p.name in stems
    ]
    return problems
