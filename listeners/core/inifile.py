"""A small INI reader that remembers line numbers, so config errors can name the line.

configparser forgets where a key came from; a user who mistyped one key in a file of twenty
sections deserves ``health.conf:14: ...``. Only what such files need: ``[section]`` headers,
``key = value`` (or ``key: value``) lines, ``#`` and ``;`` comments (also after a value, past
whitespace), blank lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["IniError", "Section", "parse_ini"]

#: "; ..." or "# ..." after whitespace ends a value, as in supervisord's own conf files
_INLINE_COMMENT = re.compile(r"\s[;#]")


class IniError(ValueError):
    """A line that cannot be read; the message starts with ``file:line:``."""


@dataclass
class Section:
    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str | None = None) -> int:
        return self.lines.get(key, self.line) if key else self.line


def parse_ini(text: str, source: str = "<config>") -> list[Section]:
    """Sections in file order; raises IniError for a line that is neither header nor key."""
    sections: list[Section] = []
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise IniError(f"{source}:{number}: a section header is [name], got {line!r}")
            current = Section(name=line[1:-1].strip(), line=number)
            sections.append(current)
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise IniError(f"{source}:{number}: expected key = value, got {line!r}")
        if current is None:
            raise IniError(f"{source}:{number}: {line!r} comes before any [section]")
        key = line[:sep].strip().lower().replace("_", "-")
        if key in current.values:
            raise IniError(
                f"{source}:{number}: {key} is set twice in [{current.name}]"
                f" (first on line {current.lines[key]})"
            )
        current.values[key] = _INLINE_COMMENT.split(line[sep + 1 :], maxsplit=1)[0].strip()
        current.lines[key] = number
    return sections
