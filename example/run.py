"""Run the example stack in the foreground: `make run` calls this, and so does the image.

`example/run.py healthcheck` is the image's HEALTHCHECK: it asks the exporter at
$EXPORTER_ADDRESS, whatever address the container was started with.

It makes sure the run directory exists, settles the dashboard password, says where everything
is, and then becomes supervisord (exec), so signals and the exit status are supervisord's own.

The password never reaches supervisord's environment, which every worker and listener inherits
(readable in /proc/<pid>/environ). It is written, with the dashboard's address, into
run/dashboard.conf (mode 0600), which supervisord.conf includes. Where it comes from, first found:
$SUPERVISOR_DASHBOARD_PASSWORD_FILE (a mounted secret), $SUPERVISOR_DASHBOARD_PASSWORD (taken out
of the environment before supervisord starts), else run/dashboard-password, made up on the first
start (mode 0600) and kept.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import urllib.request
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
#: Environment variables that carry the password to this script and go no further.
SECRET_VARIABLES = ("SUPERVISOR_DASHBOARD_PASSWORD", "SUPERVISOR_DASHBOARD_PASSWORD_FILE")
#: The conf include with the password, written at every start (supervisord.conf includes it).
DASHBOARD_CONF = "dashboard.conf"


class SetupError(Exception):
    """Something the user has to fix; the message says what."""


def _write_private(path: Path, text: str) -> None:
    """Replace path with text, readable by this user only from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def dashboard_password(run_dir: Path, environ: dict[str, str]) -> tuple[str, str]:
    """The password and a phrase saying where it comes from."""
    given_file = environ.get("SUPERVISOR_DASHBOARD_PASSWORD_FILE")
    if given_file:
        try:
            password = Path(given_file).read_text().strip()
        except OSError as exc:
            raise SetupError(
                f"cannot read $SUPERVISOR_DASHBOARD_PASSWORD_FILE ({given_file}): "
                f"{exc.strerror}; mount the file or unset the variable"
            ) from exc
        return check_password(password, "$SUPERVISOR_DASHBOARD_PASSWORD_FILE"), f"in {given_file}"
    given = environ.get("SUPERVISOR_DASHBOARD_PASSWORD")
    if given:
        where = "from $SUPERVISOR_DASHBOARD_PASSWORD"
        return check_password(given, "$SUPERVISOR_DASHBOARD_PASSWORD"), where
    path = run_dir / "dashboard-password"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(12) + "\n")
    return check_password(path.read_text().strip(), str(path)), f"in {path}"


def check_password(password: str, source: str) -> str:
    """Refuse what supervisord's conf cannot carry verbatim (it expands %, strips blanks)."""
    if not password:
        raise SetupError(f"the dashboard password in {source} is empty; set one")
    if "%" in password or any(c.isspace() or not c.isprintable() for c in password):
        raise SetupError(
            f"the dashboard password in {source} has a %, a blank or a control character, "
            "which supervisord's conf cannot hold; choose one without"
        )
    return password


def dashboard_conf(address: str, password: str) -> str:
    """The [inet_http_server] section, included by supervisord.conf."""
    return (
        "; Written by example/run.py at every start (mode 0600): the dashboard's address and\n"
        "; password, kept out of the environment that supervisord passes to its children.\n"
        "[inet_http_server]\n"
        f"port={address}\n"
        "username=admin\n"
        f"password={password}\n"
    )


def child_environment(environ: dict[str, str]) -> dict[str, str]:
    """What supervisord (and so every worker and listener) runs with: no password."""
    env = {**DEFAULT_ADDRESSES, **environ}
    for name in SECRET_VARIABLES:
        env.pop(name, None)
    return env


def prepare(stack: Path, environ: dict[str, str]) -> tuple[dict[str, str], str]:
    """Write run/dashboard.conf; return supervisord's environment and where the password is."""
    run_dir = stack / "run"
    run_dir.mkdir(exist_ok=True)
    password, where = dashboard_password(run_dir, environ)
    env = child_environment(environ)
    _write_private(
        run_dir / DASHBOARD_CONF, dashboard_conf(env["SUPERVISOR_DASHBOARD_ADDRESS"], password)
    )
    return env, where


def metrics_url(environ: dict[str, str]) -> str:
    """Where the exporter answers, from $EXPORTER_ADDRESS (a wildcard host means loopback)."""
    address = environ.get("EXPORTER_ADDRESS") or DEFAULT_ADDRESSES["EXPORTER_ADDRESS"]
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):  # noqa: S104 - a listen address read, not bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def healthcheck(environ: dict[str, str]) -> int:
    """0 when the exporter answers and says supervisord_up 1 (the image's HEALTHCHECK)."""
    url = metrics_url(environ)
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - our own exporter
            body = resp.read()
    except OSError as exc:
        sys.stderr.write(f"unhealthy: {url}: {exc}\n")
        return 1
    if b"\nsupervisord_up 1" not in b"\n" + body:
        sys.stderr.write(f"unhealthy: {url} does not say supervisord_up 1\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["healthcheck"]:
        return healthcheck(dict(os.environ))
    if args:
        sys.stderr.write("usage: example/run.py [healthcheck]\n")
        return 2
    conf = STACK / "supervisord.conf"
    run_dir = STACK / "run"
    supervisord = shutil.which("supervisord")
    if supervisord is None:
        sys.stderr.write("supervisord is not on PATH: run `make run`, which installs it\n")
        return 2
    try:
        env, where = prepare(STACK, dict(os.environ))
    except SetupError as exc:
        sys.stderr.write(f"example/run.py: {exc}\n")
        return 2
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
