"""Run the example stack in the foreground: `make run` calls this, and so does the image.

It makes sure the run directory exists, makes up a dashboard password unless
SUPERVISOR_DASHBOARD_PASSWORD is set (kept in run/dashboard-password, mode 0600), says where
everything is, and then becomes supervisord (exec), so signals and the exit status are
supervisord's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

STACK = Path(__file__).resolve().parent / "docker" / "supervisord"
#: Where the dashboard and the exporter listen unless the environment says otherwise: loopback
#: only. The image sets 0.0.0.0 (inside its own network namespace) and is published on the
#: host's loopback.
DEFAULT_ADDRESSES = {
    "SUPERVISOR_DASHBOARD_ADDRESS": "127.0.0.1:8080",
    "EXPORTER_ADDRESS": "127.0.0.1:9876",
    # the example's catch-all SMTP server (mail_catcher), where the PHP mail senders deliver
    "SMTP_ADDRESS": "127.0.0.1:2525",
}


def dashboard_password(run_dir: Path) -> tuple[str, str]:
    given = os.environ.get("SUPERVISOR_DASHBOARD_PASSWORD")
    if given:
        return given, "from $SUPERVISOR_DASHBOARD_PASSWORD"
    path = run_dir / "dashboard-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(12) + "\n")
    return path.read_text().strip(), f"in {path}"


def main() -> int:
    conf = STACK / "supervisord.conf"
    run_dir = STACK / "run"
    run_dir.mkdir(exist_ok=True)
    password, where = dashboard_password(run_dir)
    supervisord = shutil.which("supervisord")
    if supervisord is None:
        sys.stderr.write("supervisord is not on PATH: run `make run`, which installs it\n")
        return 2
    env = {**DEFAULT_ADDRESSES, **os.environ, "SUPERVISOR_DASHBOARD_PASSWORD": password}
    dashboard, exporter = env["SUPERVISOR_DASHBOARD_ADDRESS"], env["EXPORTER_ADDRESS"]
    sys.stderr.write(
        "Example stack starting (Ctrl-C stops it)\n"
        f"  dashboard  http://{dashboard}/  user admin, password {where}\n"
        f"  metrics    http://{exporter}/metrics   status page http://{exporter}/\n"
        f"  alerts     {run_dir / 'alerts.jsonl'}\n"
        f"  mail       {run_dir / 'mail'}  (SMTP on {env['SMTP_ADDRESS']})\n"
        f"  logs       {run_dir}\n"
        f"  tasks      supervisor-tasks -c {conf} list\n"
    )
    sys.stderr.flush()
    os.execve(supervisord, [supervisord, "-n", "-c", str(conf)], env)  # noqa: S606 - exec on purpose
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
