"""The status page's routes: ``/``, ``/api/status``, ``/process/<group>:<name>``, ``/static/``,
and ``POST /action``.

The HTTP server (web.py) authenticates and hands each request here as (method, path, user,
headers, body); a route answers with a ``Response``. Nothing here touches sockets.
"""

from __future__ import annotations

import base64
import html
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import NamedTuple
from urllib.parse import parse_qs, unquote

from listeners.core.log import get_logger
from listeners.core.supervisor import SupervisorError
from listeners.metrics import api, page
from listeners.metrics.actions import Actions, Refused
from listeners.metrics.history import History
from listeners.metrics.proc import ProcReader, sample
from listeners.metrics.snapshot import SnapshotSource

__all__ = ["MAX_FORM_BYTES", "Response", "Site", "basic_user", "handle_get", "handle_post"]

log = get_logger("listeners.exporter.web")

MAX_FORM_BYTES = 4096
#: process pages fetching a stderr tail from supervisord at once (of the 64 request slots)
TAILS_AT_ONCE = 8
TAIL_BYTES = 4096
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
#: Scripts from this origin only; inline style attributes (the memory bars) are allowed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Response(NamedTuple):
    code: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _static(name: str) -> bytes:
    return resources.files("listeners.metrics").joinpath("static", name).read_bytes()


STATIC = {
    "/static/status.js": ("text/javascript; charset=utf-8", "status.js"),
    "/static/status.css": ("text/css; charset=utf-8", "status.css"),
}


@dataclass
class Site:
    """What the routes need; ``actions`` is None when the page is read-only."""

    state: SnapshotSource
    reader: ProcReader
    dashboard_url: str
    history: History | None = None
    actions: Actions | None = None
    tail: Callable[[str], str | None] | None = None
    grafana_url: str | None = None
    clock: Callable[[], float] = time.time
    _static: dict[str, bytes] = field(default_factory=dict)
    #: process pages asking supervisord for a stderr tail at once: each holds a request slot
    #: while it waits (up to the RPC timeout when supervisord is stalled), so beyond these a
    #: page goes without its tail instead of adding to the slots /metrics needs
    _tails: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(TAILS_AT_ONCE)
    )

    def viewer(self, user: str | None) -> page.Viewer:
        return self.actions.viewer(user) if self.actions else page.Viewer(user)


def basic_user(header: str | None) -> str | None:
    """The user name of a Basic Authorization header the server has already checked."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        raw = base64.b64decode(header[6:], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return raw.partition(":")[0]


def handle_get(site: Site, path: str, user: str | None) -> Response | None:
    """Answer a page route, or None when ``path`` is not one of ours."""
    if path == "/":
        snap, usages = sample(site.state, site.reader)
        tasks = site.actions.tasks if site.actions else None
        body = page.render_status_page(
            snap,
            usages,
            site.dashboard_url,
            site.clock(),
            site.viewer(user),
            tasks=tasks.names() if tasks else None,
        )
        return Response(200, HTML, body.encode())
    if path == "/api/status":
        snap, usages = sample(site.state, site.reader)
        return Response(200, JSON, api.status_json(snap, usages, site.clock()))
    if path.startswith("/process/"):
        return _process(site, unquote(path[len("/process/") :]), user)
    if path in STATIC:
        kind, name = STATIC[path]
        if name not in site._static:
            site._static[name] = _static(name)
        return Response(200, kind, site._static[name], (("Cache-Control", "max-age=300"),))
    return None


def _process(site: Site, full_name: str, user: str | None) -> Response:
    snap, usages = sample(site.state, site.reader)
    row = next((r for r in api.rows(snap, usages) if r.full_name == full_name), None)
    history = site.history
    events = [tuple(ev) for ev in history.events(full_name)] if history else []
    samples = [(s.at, s.memory_bytes) for s in history.samples(full_name)] if history else []
    tail: str | None = None
    if row is not None and site.tail is not None:
        if not site._tails.acquire(blocking=False):
            tail = "(stderr tail skipped: other pages are waiting on supervisord; reload shortly)"
        else:
            try:
                tail = site.tail(full_name)
            except SupervisorError as exc:
                tail = f"(stderr tail unavailable: {exc})"
            finally:
                site._tails.release()
    body = page.render_process_page(
        row,
        full_name,
        events=events,  # type: ignore[arg-type]
        samples=samples,
        stderr_tail=tail,
        dashboard_url=site.dashboard_url,
        grafana_url=site.grafana_url,
        now=site.clock(),
        viewer=site.viewer(user),
    )
    return Response(200 if row else 404, HTML, body.encode())


def _refusal(code: int, reason: str) -> Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>refused</title>"
        '<link rel="stylesheet" href="/static/status.css"></head><body>'
        f"<h1>refused</h1><p class=reason>{html.escape(reason)}</p>"
        '<p><a href="/">back to the status page</a></p></body></html>\n'
    )
    return Response(code, HTML, body.encode())


def _safe_back(back: str) -> str:
    # Only a path on this server: never //host or a scheme (an open redirect).
    if back.startswith("/") and not back.startswith("//") and "\\" not in back:
        return back
    return "/"


def handle_post(
    site: Site, path: str, user: str | None, headers: Mapping[str, str], body: bytes
) -> Response:
    """``POST /action``; everything else is refused with a reason."""
    if path != "/action":
        return _refusal(405, f"nothing to POST at {path}: actions go to /action")
    if site.actions is None:
        return _refusal(
            403,
            "the status page is read-only: actions need a web config with basic_auth_users"
            " and an operators: list",
        )
    if len(body) > MAX_FORM_BYTES:
        return _refusal(413, "the form is too large")
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return _refusal(400, "the form is not application/x-www-form-urlencoded")
    form = {k: v[0] for k, v in fields.items() if v}
    snap = site.state.snapshot()
    known = {p.full_name for p in snap.processes}
    try:
        done = site.actions.perform(user, headers, form, known)
    except Refused as refused:
        log.warning("exporter.action_refused", user=user, reason=refused.reason, code=refused.code)
        return _refusal(refused.code, refused.reason)
    back = _safe_back(form.get("back", "/"))
    return Response(303, TEXT, (done + "\n").encode(), (("Location", back),))
