"""Checks of task files with supervisord's own parser, plus what supervisord silently accepts.

"Valid" means what supervisord will accept (``supervisor.options`` parses it); unknown keys and a
program defined twice (which configparser merges without a word) are reported here too.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from listeners.taskfiles.files import read_text, scan_sections
from listeners.taskfiles.layout import (
    FILE_SUFFIX_RE,
    SECTION_KEYS,
    ConfError,
    Layout,
    Problem,
    Section,
    environ_expansions,
)

__all__ = ["duplicate_problems", "group_error", "parser_for", "validate_file", "validate_layout"]


def _server_options(layout: Layout) -> Any:
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.here = str(layout.here)
    options.configfile = str(layout.conf)
    options.environ_expansions = environ_expansions(layout.environment)
    return options


def parser_for(layout: Layout, files: Iterable[Path], drop: tuple[str, str] | None = None) -> Any:
    """A parser holding ``files`` as supervisord includes them (each with its own %(here)s)."""
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    parser.expansions = environ_expansions(layout.environment)
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
        text = read_text(path)
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
    # what configparser would say next is the same fault again, at length: one problem each
    if any(p.line and ("cannot parse" in p.message or "before any" in p.message) for p in problems):
        return problems
    try:
        parser = parser_for(layout, [path])
    except configparser.Error as exc:
        lineno: int | None = getattr(exc, "lineno", None)
        errors = getattr(exc, "errors", None)
        if lineno is None and errors:
            lineno = int(errors[0][0])
        said = " ".join(str(exc).split())  # configparser's message spans lines
        return [*problems, Problem(path, f"supervisord cannot parse it: {said}", line=lineno)]
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
    match = FILE_SUFFIX_RE.search(error)
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
            sections, _ = scan_sections(path, read_text(path))
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
        if len({(p, t) for p, _, t in places}) < 2:
            continue  # once, or one section twice in one file: validate_file said "defined twice"
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
