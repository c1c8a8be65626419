"""--help reads right in a narrow terminal: lines wrap between words, never inside one."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

TOOLS = ("crashmail", "memmon", "exporter", "tasks", "health", "httpok")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every tool's parser, and each tasks subcommand's (its --help is a page of its own)."""
    found = []
    for tool in TOOLS:
        module = importlib.import_module(f"listeners.{tool}")
        found.append((tool, module.build_parser()))
        if hasattr(module, "subcommand_parsers"):
            found += [(f"{tool} {n}", p) for n, p in module.subcommand_parsers().items()]
    return found


def words(
    parser: argparse.ArgumentParser, columns: int, monkeypatch: pytest.MonkeyPatch
) -> set[str]:
    # argparse takes its width from shutil.get_terminal_size, which reads $COLUMNS first
    monkeypatch.setenv("COLUMNS", str(columns))
    return set(parser.format_help().split())


@pytest.mark.parametrize("columns", [40, 60])
@pytest.mark.parametrize(("name", "parser"), parsers(), ids=[n for n, _ in parsers()])
def test_no_word_of_the_help_is_cut_at_a_narrow_width(name, parser, columns, monkeypatch):
    """Every word of the help at width 200 is still one word at 40 and 60 columns."""
    wide = words(parser, 200, monkeypatch)
    narrow = words(parser, columns, monkeypatch)
    assert [] == sorted(wide - narrow)


def test_every_tool_is_covered():
    """The six tools and the four tasks subcommands are all checked."""
    tasks = ["tasks", "tasks list", "tasks check", "tasks enable", "tasks disable"]
    assert ["crashmail", "memmon", "exporter", *tasks, "health", "httpok"] == [
        n for n, _ in parsers()
    ]


def test_the_docs_a_help_names_exist_and_ship_in_the_sdist():
    """A docs/*.md that --help points at is in the repository, and MANIFEST.in puts docs/ into
    the sdist, so "in the source tree or sdist" holds for an installed wheel too."""
    repo = Path(__file__).resolve().parents[1]
    named = {m for _, p in parsers() for m in re.findall(r"docs/[\w.-]+\.md", p.format_help())}
    assert {"docs/crashmail.md", "docs/health.md"} <= named
    assert [] == sorted(n for n in named if not (repo / n).is_file())
    assert "graft docs" in (repo / "MANIFEST.in").read_text().splitlines()
