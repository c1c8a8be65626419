"""The HTML status page: every process, its state, memory against its ceiling, restarts and
why it last exited."""

from __future__ import annotations

import html
import time

from listeners.core.units import format_size
from listeners.metrics.snapshot import Snapshot, Usage

__all__ = ["render_status_page"]


_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.3em .7em;border-bottom:1px solid #ddd;
text-align:left}.bar{display:inline-block;width:120px;height:.8em;background:#eee;
vertical-align:middle;margin-right:.5em}.bar>span{display:block;height:100%;background:#4a8}
.bar>span.hot{background:#d84}.s-RUNNING{color:#170}.s-FATAL,.s-BACKOFF,.s-EXITED,
.s-UNKNOWN{color:#b10}.loop{color:#b10;font-weight:bold}.down{color:#b10}
"""


def render_status_page(
    snap: Snapshot, usages: dict[str, Usage], dashboard_url: str, now: float | None = None
) -> str:
    """The HTML status page; every piece of text from supervisord is escaped."""
    e = html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    ident = e(snap.identification or "supervisord")
    head = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{ident} status</title><style>{_CSS}</style></head><body>"
        f"<h1>{ident}</h1><p>"
        + (
            f"supervisord {e(snap.version or '')} is up"
            if snap.up
            else "<span class=down>supervisord is unreachable</span>"
        )
        + f" &middot; {len(snap.processes)} processes &middot; {e(when)}"
        f' &middot; <a href="/metrics">metrics</a>'
        f' &middot; <a href="{e(dashboard_url)}">supervisord dashboard</a></p>'
    )
    rows = []
    for p in sorted(snap.processes, key=lambda v: (v.group, v.name)):
        usage = usages.get(p.full_name)
        mem = usage.memory_bytes if usage else None
        if mem is not None and p.memory_limit:
            pct = min(100.0, 100.0 * mem / p.memory_limit)
            hot = " class=hot" if pct >= 90 else ""
            bar = (
                f'<span class=bar title="{pct:.0f}%"><span{hot} style="width:{pct:.0f}%">'
                "</span></span>"
            )
            mem_text = f"{bar}{e(format_size(mem))} / {e(format_size(p.memory_limit))}"
        elif mem is not None:
            mem_text = e(format_size(mem))
        else:
            mem_text = "&ndash;"
        name = p.name if p.group == p.name else f"{p.group}:{p.name}"
        rows.append(
            f"<tr><td>{e(name)}</td><td class=s-{e(p.state)}>{e(p.state)}</td>"
            f"<td>{mem_text}</td><td>{p.restarts}</td>"
            + ("<td class=loop>crash loop</td>" if p.crash_looping else "<td>no</td>")
            + f"<td>{e(p.exit_reason_text or '')}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>process</th><th>state</th><th>memory</th><th>restarts</th>"
        "<th>crash looping</th><th>last exit</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return head + (table if snap.up else "") + "</body></html>\n"
