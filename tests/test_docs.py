"""The documentation keeps up with the code: every flag and every metric is written down."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class TestDocs:
    def test_command_reference_is_generated_from_the_current_parsers(self):
        """docs/reference.md equals what scripts/gen_reference.py makes now."""
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "gen_reference.py"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (0, "") == (result.returncode, result.stderr)

    def test_every_exported_metric_family_is_documented(self):
        """Each supervisord_* name the exporter code can emit appears in docs/exporter.md."""
        sources = [
            REPO / "listeners" / "exporter.py",
            *(REPO / "listeners" / "metrics").glob("*.py"),
        ]
        code = "".join(p.read_text() for p in sources)
        names = set(re.findall(r"\"(supervisord_[a-z_]+)\"", code))
        assert len(names) >= 14
        doc = (REPO / "docs" / "exporter.md").read_text()
        assert [] == sorted(n for n in names if n not in doc)

    def test_readme_gives_the_two_commands(self):
        """The README's quick start names make run and make test, and both targets exist."""
        readme = (REPO / "README.md").read_text()
        makefile = (REPO / "Makefile").read_text()
        assert "make run" in readme
        assert "make test" in readme
        assert re.search(r"^run:", makefile, re.MULTILINE)
        assert re.search(r"^test:", makefile, re.MULTILINE)
        assert "make test" in (REPO / ".ci" / "run").read_text()

    def test_doc_links_point_at_existing_files(self):
        """Relative links in README.md and docs/*.md lead to files in the repository."""
        broken = []
        for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
                if not (page.parent / target).exists():
                    broken.append(f"{page.relative_to(REPO)} -> {target}")
        assert [] == broken


class TestCitations:
    def test_every_file_the_code_and_docs_cite_exists(self):
        """A path like docs/x.md or listeners/y.py named in code, docs or README is in the repo."""
        cited = re.compile(
            r"\b((?:docs|listeners|bench|scripts|tests|example)/[A-Za-z0-9_./-]+"
            r"\.(?:md|py|conf|yml|yaml|sh|json|png))\b"
        )
        sources = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
        sources += list((REPO / "listeners").rglob("*.py"))
        missing = []
        for path in sources:
            for ref in cited.findall(path.read_text()):
                if not (REPO / ref).exists():
                    missing.append(f"{path.relative_to(REPO)}: {ref}")
        assert [] == missing

    def test_docs_name_the_new_rooms(self):
        """docs/internals.md describes every module of listeners/core/ and every wing."""
        text = (REPO / "docs" / "internals.md").read_text()
        modules = [
            p.stem for p in (REPO / "listeners" / "core").glob("*.py") if p.stem != "__init__"
        ]
        assert [] == [m for m in modules if m not in text]
        wings = ("notify/", "metrics/", "taskfiles/", "watchdog/")
        assert [] == [w for w in wings if w not in text]
