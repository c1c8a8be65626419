"""The task files in the layout: their sections, as found, and the tasks named on a command line."""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from pathlib import Path

from listeners.taskfiles.layout import (
    KEY_RE,
    SECTION_RE,
    ConfError,
    Layout,
    NameRefused,
    Problem,
    Section,
    Task,
)

__all__ = ["discover", "read_text", "resolve", "scan_sections"]


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
        match = SECTION_RE.match(stripped)
        if match:
            raw.append((match["name"].strip(), number, {}))
            continue
        if stripped.startswith("["):
            # One problem at its line, and the keys below still belong to it.
            problems.append(
                Problem(
                    path,
                    f"cannot parse section header {stripped!r}: it lacks its closing ']'",
                    line=number,
                )
            )
            raw.append((stripped[1:].strip(), number, {}))
            continue
        key = KEY_RE.match(stripped)
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


def _parse_problems(path: Path, text: str) -> list[Problem]:
    """What supervisord's own parser refuses in a file the line scan found clean."""
    from supervisor.options import UnhosedConfigParser

    try:
        UnhosedConfigParser().read_string(text, str(path))
    except configparser.Error as exc:
        line: int | None = getattr(exc, "lineno", None)
        return [Problem(path, f"supervisord cannot parse it: {exc}".splitlines()[0], line=line)]
    return []


def read_text(path: Path) -> str:
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
                text = read_text(path)
                sections, problems = scan_sections(path, text)
            except ConfError as exc:
                sections, problems = [], [Problem(path, str(exc))]
            if not problems:
                problems = _parse_problems(path, text)
            tasks.append(Task(_stem(path), path, enabled, tuple(sections), tuple(problems)))
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
