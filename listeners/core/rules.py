"""Which size limit judges a process: -p beats -g beats -a, with --exclude globs.

Shared by the listeners that act on processes by a per-process threshold (memmon, health),
so a ``-p group:name=SIZE`` means the same everywhere.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from listeners.core.names import full_name
from listeners.core.units import format_size, parse_size

__all__ = [
    "NAMESIZE_FORM",
    "Rule",
    "excluded_by",
    "parse_namesize",
    "pick_rule",
    "program_matches",
    "unknown_patterns",
]

NAMESIZE_FORM = "NAME=SIZE, e.g. worker=16MB or web:web_0=200MB"


@dataclass(frozen=True)
class Rule:
    """One limit: ``kind`` is program, group or any (most specific first)."""

    kind: str
    pattern: str
    limit: int

    @property
    def label(self) -> str:
        flag = {"program": "-p", "group": "-g", "any": "-a"}[self.kind]
        target = "" if self.kind == "any" else f"{self.pattern}="
        return f"{flag} {target}{format_size(self.limit)}"


def parse_namesize(text: str) -> tuple[str, int]:
    """``name=16MB`` -> (name, bytes); ValueError naming the value."""
    name, sep, size = text.rpartition("=")
    if not sep or not name.strip():
        raise ValueError(f"invalid value {text!r}: expected {NAMESIZE_FORM}")
    try:
        return name.strip(), parse_size(size)
    except ValueError as exc:
        raise ValueError(f"invalid value {text!r}: {exc}") from None


def program_matches(pattern: str, group: str, name: str) -> int:
    """How well a -p NAME fits a process: 3 group:name, 2 process name, 1 program, 0 not."""
    if pattern == full_name(group, name):
        return 3
    if pattern == name:
        return 2
    if pattern == group:
        return 1
    return 0


def excluded_by(patterns: Iterable[str], group: str, name: str) -> str | None:
    """The --exclude pattern that covers ``group:name``, if any."""
    full = full_name(group, name)
    for pattern in patterns:
        if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(group, pattern):
            return pattern
    return None


def pick_rule(
    programs: Sequence[Rule],
    groups: Sequence[Rule],
    any_rule: Rule | None,
    group: str,
    name: str,
    *,
    skipped: bool = False,
) -> Rule | None:
    """The most specific rule for ``group:name``; ``skipped`` leaves only an explicit -p."""
    best: tuple[int, Rule] | None = None
    for rule in programs:
        score = program_matches(rule.pattern, group, name)
        if score and (best is None or score > best[0]):
            best = (score, rule)
    if best is not None:
        return best[1]
    if skipped:
        return None
    for rule in groups:
        if rule.pattern == group:
            return rule
    return any_rule


def unknown_patterns(programs: Sequence[Rule], infos: Iterable[Mapping[str, Any]]) -> list[str]:
    """-p names that match no process supervisord knows."""
    pairs = [(str(i["group"]), str(i["name"])) for i in infos]
    return [
        r.pattern for r in programs if not any(program_matches(r.pattern, g, n) for g, n in pairs)
    ]
