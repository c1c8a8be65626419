"""Start a copy of the example stack exactly as shipped (its conf, workers and listeners)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from listeners.core.supervisor import Connection, Supervisor
from tests.e2e.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def _run_py() -> Any:
    """example/run.py as a module, for the defaults it gives the stack."""
    spec = importlib.util.spec_from_file_location("example_run", REPO / "example" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULT_ADDRESSES: dict[str, str] = _run_py().DEFAULT_ADDRESSES
STACK = REPO / "example" / "docker" / "supervisord"
#: A throwaway for a loopback test stack, unique so that a search of /proc finds only ours.
PASSWORD = f"e2e-dashboard-{secrets.token_hex(8)}"


class ExampleStack:
    """The example copied to a short temp dir and started as `make run` does: example/run.py."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sl-ex-", dir="/tmp"))
        self.run_py = self.root / "example" / "run.py"
        self.dir = self.root / "example" / "docker" / "supervisord"
        self.run_py.parent.mkdir(parents=True)
        shutil.copy2(REPO / "example" / "run.py", self.run_py)
        # as shipped: nothing a local `make run` left in run/ comes along
        shutil.copytree(
            STACK,
            self.dir,
            ignore=lambda d, names: [n for n in names if Path(d).name == "run" and n != ".gitkeep"],
        )
        self.run_dir = self.dir / "run"
        self.conf = self.dir / "supervisord.conf"
        self.client = Supervisor(Connection(url=f"unix://{self.run_dir}/supervisor.sock"))
        bindir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            # run.py hands it to supervisord in a 0600 conf include, not in the environment
            "SUPERVISOR_DASHBOARD_PASSWORD": PASSWORD,
            # free ports, not the shipped 8080/9876: the suite passes beside a running `make run`
            "SUPERVISOR_DASHBOARD_ADDRESS": f"127.0.0.1:{free_port()}",
            "EXPORTER_ADDRESS": f"127.0.0.1:{free_port()}",
            "SMTP_ADDRESS": f"127.0.0.1:{free_port()}",
        }
        self.dashboard_url = f"http://{self.env['SUPERVISOR_DASHBOARD_ADDRESS']}/"
        self.exporter_url = f"http://{self.env['EXPORTER_ADDRESS']}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ExampleStack:
        self.proc = subprocess.Popen(
            [sys.executable, str(self.run_py)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # run.py execs supervisord: self.proc is supervisord itself
        wait_for(lambda: self.client.state() == "RUNNING", 30, what="example supervisord")
        return self

    def log_text(self) -> str:
        path = self.run_dir / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
