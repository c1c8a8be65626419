"""The package's floors stay honest: the shared kit, wings and tools import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "listeners"
TOOLS = {"crashmail", "memmon", "exporter", "tasks", "health", "httpok"}
WINGS = {"notify", "metrics", "taskfiles", "watchdog"}


def imported_modules(path: Path) -> set[str]:
    """Every ``listeners.*`` module a file imports, at its top or inside a function."""
    return imported_modules_of(path.read_text(), str(path))


def imported_modules_of(source: str, filename: str = "<source>") -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("listeners")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("listeners"):
            module = node.module or ""
            found.add(module)
            # ``from listeners import memmon`` and ``from listeners.metrics import web``
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def room(module: str) -> str:
    """'core', a wing's name, a tool's name, or '' for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(floor: str, allowed: set[str]) -> list[str]:
    bad = []
    files = [PACKAGE / f"{floor}.py"] if floor in TOOLS else sorted((PACKAGE / floor).glob("*.py"))
    for path in files:
        for module in imported_modules(path):
            target = room(module)
            if target and target not in allowed:
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    return bad


class TestFloors:
    def test_the_layout_has_the_rooms_the_tests_expect(self):
        """Every wing is a folder and every command module a file, so the checks below read code."""
        assert [] == [w for w in sorted(WINGS | {"core"}) if not (PACKAGE / w).is_dir()]
        assert [] == [
            t
            for t in ("crashmail", "memmon", "exporter", "tasks")
            if not (PACKAGE / f"{t}.py").is_file()
        ]

    def test_core_imports_no_wing_and_no_tool(self):
        """listeners/core/ is the shared kit: nothing in it reaches up to a wing or a tool."""
        assert [] == violations("core", {"core"})

    def test_wings_import_only_core_and_themselves(self):
        """A wing (notify, metrics, taskfiles, watchdog) builds on core, never on another wing
        or a tool."""
        bad = []
        for wing in sorted(WINGS):
            bad += violations(wing, {"core", wing})
        assert [] == bad

    def test_no_tool_imports_another_tool(self):
        """The command modules stand side by side: none imports another."""
        bad = []
        for tool in sorted(t for t in TOOLS if (PACKAGE / f"{t}.py").is_file()):
            bad += violations(tool, {"core", *WINGS, tool})
        assert [] == bad

    def test_the_check_sees_a_violation(self):
        """The scanner finds an upward import, so the checks above can fail."""
        assert "listeners.crashmail" in imported_modules_of("from listeners import crashmail\n")


def test_no_module_is_over_850_lines():
    """Issue 10's bound: a module that outgrows it is split, not left to grow."""
    root = Path(__file__).parents[1] / "listeners"
    big = {
        str(p.relative_to(root)): n
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 850
    }
    assert {} == big
