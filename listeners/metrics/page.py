"""The HTML status page: problems first, every process, restarts by cause, actions for operators.

Server-rendered and complete without script (a ``<noscript>`` meta refresh keeps it current);
``/static/status.js`` (same origin, allowed by the CSP) polls ``/api/status`` and redraws the
table in place. Every piece of text from supervisord is escaped; the script sets text only
through ``textContent``.
"""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from listeners.core.units import format_size
from listeners.metrics.api import COUNTS, Row, rows, summary
from listeners.metrics.snapshot import OutboxView, Snapshot, Usage

__all__ = [
    "ACTIONS",
    "Viewer",
    "format_uptime",
    "memory_chart",
    "page_head",
    "process_path",
    "render_process_page",
    "render_status_page",
    "delivery_warning",
    "outbox_warning",
    "unreadable_warning",
]

#: What a process row offers an operator, in button order.
ACTIONS = ("restart", "stop", "start")
REFRESH_SECONDS = 5
#: How many of memmon's unreadable processes the warning names before "and N more".
UNREADABLE_NAMED = 10

e = html.escape


class Viewer:
    """Who looks at the page: an operator (with a CSRF token) sees forms, a viewer does not."""

    def __init__(self, user: str | None = None, csrf: str | None = None) -> None:
        self.user = user
        self.csrf = csrf

    @property
    def operator(self) -> bool:
        return self.csrf is not None


def process_path(full_name: str) -> str:
    return "/process/" + quote(full_name, safe=":")


def format_uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def page_head(title: str, viewer: Viewer, *, refresh: bool) -> str:
    meta = f'<meta name="csrf-token" content="{e(viewer.csrf)}">' if viewer.csrf else ""
    noscript = (
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>'
        if refresh
        else ""
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width">'
        f"<title>{e(title)}</title>{meta}{noscript}"
        '<link rel="stylesheet" href="/static/status.css">'
        '<script src="/static/status.js" defer></script></head>'
    )


def _memory(r: Row) -> str:
    mem, limit = r.memory_bytes, r.view.memory_limit
    if mem is not None and limit:
        pct = min(100.0, 100.0 * mem / limit)
        hot = " class=hot" if pct >= 90 else ""
        room = limit - mem
        head = (
            f"<span class=over>{e(format_size(-room))} over</span>"
            if room < 0
            else f"{e(format_size(room))} free"
        )
        return (
            f'<span class=bar title="{pct:.0f}%"><span{hot} style="width:{pct:.0f}%">'
            f"</span></span>{e(format_size(mem))} / {e(format_size(limit))}"
            f" <small>{head}</small>"
        )
    if mem is not None:
        return e(format_size(mem))
    if limit:
        return f"&ndash; / {e(format_size(limit))}"
    return "&ndash;"


def _last_exit(r: Row) -> str:
    if r.exit_reason:
        return e(r.exit_reason)
    if r.view.exit_status is not None:
        return f"exit status {r.view.exit_status}"
    return "&ndash;"


def _forms(full_name: str, viewer: Viewer, back: str) -> str:
    if not viewer.operator:
        return ""
    token, name = e(viewer.csrf or ""), e(full_name)
    return "".join(
        f'<form method=post action="/action" class=act>'
        f'<input type=hidden name=csrf value="{token}">'
        f'<input type=hidden name=process value="{name}">'
        f'<input type=hidden name=back value="{e(back)}">'
        f'<button name=action value="{a}">{a}</button></form>'
        for a in ACTIONS
    )


def _row_html(r: Row, now: float, viewer: Viewer) -> str:
    p = r.view
    label = p.name if p.group == p.name else f"{p.group}:{p.name}"
    uptime = (
        format_uptime(now - p.start_time) if p.state == "RUNNING" and p.start_time else "&ndash;"
    )
    probe = "&ndash;" if r.probe_restarts is None else str(r.probe_restarts)
    trouble = ", ".join(r.trouble)
    cls = f" class=t{r.rank}" if r.trouble else ""
    return (
        f'<tr{cls} data-name="{e(p.full_name)}">'
        f'<td><a href="{e(process_path(p.full_name))}">{e(label)}</a></td>'
        f"<td class=s-{e(p.state)}>{e(p.state)}</td>"
        f"<td>{p.pid or '&ndash;'}</td><td>{uptime}</td><td>{_memory(r)}</td>"
        f"<td>{p.unexpected_exits}</td><td>{p.memory_restarts}</td><td>{probe}</td>"
        f"<td>{p.planned_exits}</td><td>{_last_exit(r)}</td>"
        f"<td class=trouble>{e(trouble)}</td>"
        + (f"<td class=acts>{_forms(p.full_name, viewer, '/')}</td>" if viewer.operator else "")
        + "</tr>"
    )


def render_tasks(tasks: list[tuple[str, bool, str]], viewer: Viewer) -> str:
    """The tasks of tasks/ and tasks_disabled/, with enable/disable for operators; a task whose
    file is broken says so and what is wrong (supervisor-tasks refuses to enable it, and
    every enable or disable names it until it is mended or disabled)."""
    if not tasks:
        return ""
    items = []
    for name, enabled, problem in tasks:
        action = "disable" if enabled else "enable"
        form = (
            f'<form method=post action="/action" class=act>'
            f'<input type=hidden name=csrf value="{e(viewer.csrf or "")}">'
            f'<input type=hidden name=task value="{e(name)}">'
            f'<input type=hidden name=back value="/">'
            f'<button name=action value="{action}">{action}</button></form>'
            if viewer.operator
            else ""
        )
        state = "enabled" if enabled else "disabled"
        broken = f"<td class=t-broken>BROKEN: {e(problem)}</td>" if problem else "<td></td>"
        items.append(
            f'<tr data-task="{e(name)}"><td>{e(name)}</td><td class=t-{state}>{state}</td>'
            f"<td>{form}</td>{broken}</tr>"
        )
    return "<h2>tasks</h2><table id=tasks><tbody>" + "".join(items) + "</tbody></table>"


def unreadable_warning(names: tuple[str, ...] | None) -> str:
    """memmon's blind spot in words (plain text, not escaped); empty when it reads them all.

    status.js builds the same sentence from /api/status's ``memmon_unreadable``.
    """
    if not names:
        return ""
    shown = ", ".join(names[:UNREADABLE_NAMED])
    more = f" and {len(names) - UNREADABLE_NAMED} more" if len(names) > UNREADABLE_NAMED else ""
    noun = "process" if len(names) == 1 else "processes"
    return (
        f"memmon cannot read {len(names)} {noun}: {shown}{more}"
        " (run memmon as the workers' user or root)"
    )


def outbox_warning(outbox: OutboxView | None) -> str:
    """crashmail's outbox trouble in words (plain text, not escaped); empty when it writes.

    status.js builds the same sentence from /api/status's ``outbox``.
    """
    if outbox is None or not outbox.failing:
        return ""
    held = f"{outbox.spooled} alert{'' if outbox.spooled == 1 else 's'} kept in memory"
    lost = f", {outbox.dropped} lost" if outbox.dropped else ""
    return (
        f"crashmail cannot write its outbox ({outbox.error}): {held}{lost}"
        " (free disk space or stop what holds the file locked; they are written once it can)"
    )


def delivery_warning(sinks: tuple[tuple[str, int, int], ...]) -> str:
    """crashmail's sinks that hold alerts after failed attempts, in words (plain text, not
    escaped); empty when every sink keeps up. A sink with alerts waiting but no failed attempt
    is only busy, and is not named.

    status.js builds the same sentence from /api/status's ``alert_sinks``.
    """
    stuck = [
        f"{name}: {pending} waiting after {failed} failed attempt{'' if failed == 1 else 's'}"
        for name, pending, failed in sinks
        if pending and failed
    ]
    if not stuck:
        return ""
    shown = "; ".join(stuck[:UNREADABLE_NAMED])
    if len(stuck) > UNREADABLE_NAMED:
        shown += f"; and {len(stuck) - UNREADABLE_NAMED} more sinks"
    return (
        f"crashmail cannot deliver every alert ({shown}); crashmail's log says why"
        " (outbox.delivery_failed), and they are sent once the sink takes them"
    )


def render_counts(counts: dict[str, int | None]) -> str:
    items = []
    for key, label in COUNTS:
        value = counts.get(key)
        text = "&ndash;" if value is None else str(value)
        bad = " bad" if value and key != "running" else ""
        items.append(f'<li class="count{bad}" data-count="{key}"><b>{text}</b> {e(label)}</li>')
    return "<ul class=counts>" + "".join(items) + "</ul>"


HEADINGS = (
    "process",
    "state",
    "pid",
    "uptime",
    "memory / ceiling",
    "crashes",
    "memory restarts",
    "probe restarts",
    "planned exits",
    "last exit",
    "trouble",
)


def render_status_page(
    snap: Snapshot,
    usages: dict[str, Usage],
    dashboard_url: str,
    now: float | None = None,
    viewer: Viewer | None = None,
    tasks: list[tuple[str, bool, str]] | None = None,
) -> str:
    """The HTML status page; every piece of text from supervisord is escaped."""
    viewer = viewer or Viewer()
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    ident = snap.identification or "supervisord"
    table = rows(snap, usages)
    status = (
        f"supervisord {e(snap.version or '')} is up"
        if snap.up
        else "<span class=down>supervisord is unreachable</span>"
    )
    role = "operator" if viewer.operator else "read-only"
    body = (
        f'<body data-role="{role}"><h1>{e(ident)}</h1><p id=status>'
        f"<span id=up>{status}</span> &middot; <span id=nprocs>{len(snap.processes)}</span>"
        f" processes &middot; <span id=when>{e(when)}</span>"
        ' &middot; <a href="/metrics">metrics</a> &middot; <a href="/api/status">JSON</a>'
        f' &middot; <a href="{e(dashboard_url)}">supervisord dashboard</a>'
        f" &middot; <span id=role>{role}</span></p>" + render_counts(summary(snap, table))
    )
    warning = unreadable_warning(snap.memmon_unreadable)
    body += f"<p id=unreadable class=warn{'' if warning else ' hidden'}>{e(warning)}</p>"
    trouble = outbox_warning(snap.outbox)
    body += f"<p id=outbox class=warn{'' if trouble else ' hidden'}>{e(trouble)}</p>"
    stuck = delivery_warning(snap.alert_sinks)
    body += f"<p id=delivery class=warn{'' if stuck else ' hidden'}>{e(stuck)}</p>"
    heads = "".join(f"<th>{h}</th>" for h in HEADINGS) + ("<th></th>" if viewer.operator else "")
    grid = (
        f"<table id=procs><thead><tr>{heads}</tr></thead><tbody>"
        + "".join(_row_html(r, now, viewer) for r in table)
        + "</tbody></table>"
    )
    return (
        page_head(f"{ident} status", viewer, refresh=True)
        + body
        + (grid if snap.up else "")
        + render_tasks(tasks or [], viewer)
        + "</body></html>\n"
    )


def memory_chart(
    samples: list[tuple[float, int]], limit: int | None, now: float, span: float = 3600.0
) -> str:
    """An inline SVG of memory over the last ``span`` seconds, with the ceiling as a line."""
    width, height = 600, 120
    if not samples:
        return "<p class=muted>no memory samples yet</p>"
    top = max([m for _, m in samples] + [limit or 0]) * 1.1 or 1.0

    # The x axis runs from the oldest sample kept (at most ``span`` ago) to now.
    start = max(now - span, min(at for at, _ in samples))
    shown = max(now - start, 1.0)

    def x(at: float) -> float:
        return round(width * (1 - (now - at) / shown), 1)

    def y(mem: float) -> float:
        return round(height * (1 - mem / top), 1)

    points = " ".join(f"{x(at)},{y(m)}" for at, m in samples)
    ceiling = (
        f'<line class="ceiling" x1="0" x2="{width}" y1="{y(limit)}" y2="{y(limit)}"/>'
        f'<text x=4 y="{max(10.0, y(limit) - 3)}">ceiling {e(format_size(limit))}</text>'
        if limit
        else ""
    )
    last = samples[-1][1]
    return (
        f'<svg class=chart viewBox="0 0 {width} {height}" width={width} height={height}'
        ' role=img aria-label="memory over the last hour">'
        f'<rect class="frame" x="0" y="0" width="{width}" height="{height}"/>{ceiling}'
        f'<polyline class=mem points="{points}"/>'
        f"<text x=4 y={height - 4}>{e(format_uptime(shown))} ago</text>"
        f"<text x={width - 4} y=12 text-anchor=end>now {e(format_size(last))},"
        f" peak {e(format_size(max(m for _, m in samples)))}</text></svg>"
    )


def render_process_page(
    row: Row | None,
    full_name: str,
    *,
    events: list[tuple[float, str, str]],
    samples: list[tuple[float, int]],
    stderr_tail: str | None,
    dashboard_url: str,
    grafana_url: str | None,
    now: float | None = None,
    viewer: Viewer | None = None,
) -> str:
    """One process: its numbers, recent events, memory chart, stderr tail, links, actions."""
    viewer = viewer or Viewer()
    now = time.time() if now is None else now
    head = page_head(f"{full_name} status", viewer, refresh=True)
    if row is None:
        return (
            head + f'<body data-role="read-only"><p><a href="/">&larr; all processes</a></p>'
            f"<h1>{e(full_name)}</h1><p>no such process</p></body></html>\n"
        )
    p = row.view
    links = [f'<a href="{e(dashboard_url)}">supervisord dashboard</a>']
    if grafana_url:
        group, name = quote(p.group, safe=""), quote(p.name, safe="")
        url = grafana_url.replace("{group}", group).replace("{name}", name)
        links.append(f'<a href="{e(url)}">Grafana panel</a>')
    uptime = (
        format_uptime(now - p.start_time) if p.state == "RUNNING" and p.start_time else "&ndash;"
    )
    facts = (
        f"<dl class=facts><dt>state</dt><dd class=s-{e(p.state)}>{e(p.state)}</dd>"
        f"<dt>pid</dt><dd>{p.pid or '&ndash;'}</dd><dt>uptime</dt><dd>{uptime}</dd>"
        f"<dt>memory</dt><dd>{_memory(row)}</dd>"
        f"<dt>restarts</dt><dd>{p.unexpected_exits} crashes, {p.memory_restarts} by memmon,"
        f" {'&ndash;' if row.probe_restarts is None else row.probe_restarts} by probes,"
        f" {p.planned_exits} planned exits ({p.restarts} starts in all)</dd>"
        f"<dt>last exit</dt><dd>{_last_exit(row)}</dd>"
        f"<dt>trouble</dt><dd class=trouble>{e(', '.join(row.trouble)) or 'none'}</dd></dl>"
    )
    fmt = "%Y-%m-%d %H:%M:%S"
    event_rows = "".join(
        f"<tr><td>{e(time.strftime(fmt, time.localtime(at)))}</td><td>{e(kind)}</td>"
        f"<td>{e(text)}</td></tr>"
        for at, kind, text in events
    )
    event_table = (
        f"<table class=events><tbody>{event_rows}</tbody></table>"
        if events
        else "<p class=muted>nothing recorded since the exporter started</p>"
    )
    tail = (
        f"<pre class=tail>{e(stderr_tail)}</pre>"
        if stderr_tail
        else "<p class=muted>no stderr log to show (empty, not kept, or sent to /dev/stderr)</p>"
    )
    forms = _forms(p.full_name, viewer, process_path(p.full_name))
    return (
        head + f'<body data-role="{"operator" if viewer.operator else "read-only"}">'
        f'<p><a href="/">&larr; all processes</a> &middot; {" &middot; ".join(links)}</p>'
        f"<main id=detail><h1>{e(full_name)}</h1>"
        + (f"<div class=actions>{forms}</div>" if forms else "")
        + facts
        + "<h2>memory, last hour</h2>"
        + memory_chart(samples, p.memory_limit, now)
        + "<h2>recent events</h2>"
        + event_table
        + "<h2>stderr tail</h2>"
        + tail
        + "</main></body></html>\n"
    )
