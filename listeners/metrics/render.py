"""What the exporter exports: snapshots of its state, /proc readings, and two renderers.

The served ``/metrics`` text is written here by hand (``Renderer``) because prometheus_client's
exposition costs about 13 us per sample, and 1,000 workers with one 0/1 series per state are
18,000 samples. ``collector()`` builds the same samples as prometheus_client metric families,
fresh on every ``collect()``, for code that wants a ``CollectorRegistry``; a unit test holds
the two to the same samples. prometheus_client is imported only there, so a serving exporter
never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from listeners.core.state import STATES
from listeners.metrics.snapshot import ProcessView, Snapshot, Usage

__all__ = ["FAMILIES", "Renderer", "collector", "escape_label"]


# name, type, help. Counters carry their _total suffix here, as they appear in the text.
FAMILIES: dict[str, tuple[str, str]] = {
    "supervisord_up": ("gauge", "1 if supervisord answered the last reconcile, else 0."),
    "supervisord_info": ("gauge", "supervisord's version and identification; always 1."),
    "supervisord_process_state": (
        "gauge",
        "1 for the state the process is in, 0 for the others (supervisord's states).",
    ),
    "supervisord_process_start_time_seconds": (
        "gauge",
        "Unix time the process last entered RUNNING.",
    ),
    "supervisord_process_exit_status": ("gauge", "Exit status of the process's last exit."),
    "supervisord_process_restarts_total": (
        "counter",
        "Times the process was started again after its first start.",
    ),
    "supervisord_process_unexpected_exits_total": (
        "counter",
        "Exits with a status not listed in the program's exitcodes.",
    ),
    "supervisord_process_exits_total": (
        "counter",
        "Exits by reason: php_memory_limit, php_fatal, uncaught_exception, oom_kill, signal,"
        " memmon, expected, exit_status (none of these).",
    ),
    "supervisord_process_fatal_total": (
        "counter",
        "Times the process entered FATAL (gave up after startretries).",
    ),
    "supervisord_process_memory_bytes": (
        "gauge",
        "Resident memory of the process and its descendants.",
    ),
    "supervisord_process_cpu_seconds_total": (
        "counter",
        "CPU time (user and system) of the process, its descendants and reaped children.",
    ),
    "supervisord_process_memory_limit_bytes": (
        "gauge",
        "Memory ceiling memmon enforces for the process.",
    ),
    "supervisord_process_memory_judged_bytes": (
        "gauge",
        "Memory of the process as memmon judges it against its ceiling (memmon's --measure,"
        " of its tree with -c); only processes memmon has a ceiling for.",
    ),
    "supervisord_process_memory_restarts_total": (
        "counter",
        "Restarts memmon performed because the process exceeded its ceiling.",
    ),
    "supervisord_process_memory_unreadable": (
        "gauge",
        "1 when memmon may not read the process's memory (so does not judge it), 0 when it can.",
    ),
    "supervisord_process_crash_looping": (
        "gauge",
        "1 while the process is in a crash loop (the rule crashmail alerts on), else 0.",
    ),
    "supervisord_process_probe_success": (
        "gauge",
        "1 when the health listener's last probe of the process passed, 0 when it failed.",
    ),
    "supervisord_process_heartbeat_age_seconds": (
        "gauge",
        "Seconds since the process's last heartbeat, as the health listener last reported.",
    ),
    "supervisord_process_backoff_seconds": (
        "gauge",
        "Seconds until the health listener starts the held (backed-off) process again.",
    ),
    "supervisord_exporter_events_total": (
        "counter",
        "supervisord events the exporter handled.",
    ),
    "supervisord_exporter_lost_events_total": (
        "counter",
        "Events supervisord dropped before the exporter saw them (buffer overflow).",
    ),
    "supervisord_exporter_reconcile_errors_total": (
        "counter",
        "Reconciles with supervisord (getAllProcessInfo) that failed.",
    ),
    "supervisor_listeners_alerts_pending": (
        "gauge",
        "Alerts crashmail has not delivered to the sink yet (from crashmail over the bus).",
    ),
    "supervisor_listeners_alert_delivery_failures_total": (
        "counter",
        "Failed attempts to deliver an alert to the sink (from crashmail over the bus).",
    ),
    "supervisor_listeners_outbox_failing": (
        "gauge",
        "1 while crashmail cannot write its outbox (a full disk, a held lock) and keeps new"
        " alerts in memory, 0 when it can (from crashmail over the bus).",
    ),
    "supervisor_listeners_outbox_spooled_alerts": (
        "gauge",
        "Alerts crashmail keeps in memory until its outbox takes writes again (from crashmail"
        " over the bus).",
    ),
    "supervisor_listeners_outbox_dropped_alerts": (
        "gauge",
        "Alerts crashmail lost during this outbox outage because its memory spool was full too"
        " (from crashmail over the bus).",
    ),
    "supervisor_listeners_memmon_unreadable_processes": (
        "gauge",
        "Processes memmon may not read the memory of, so does not judge (from memmon over the"
        " bus).",
    ),
    "supervisord_exporter_scrape_duration_seconds": (
        "gauge",
        "Time this scrape took to collect, up to this line.",
    ),
}


def _scalars(snap: Snapshot) -> list[tuple[str, int]]:
    """The families without labels after the per-process ones, in both renderers' order; the
    listeners' own appear once their listener has announced anything on the bus."""
    out = [
        ("supervisord_exporter_events_total", snap.events),
        ("supervisord_exporter_lost_events_total", snap.lost_events),
        ("supervisord_exporter_reconcile_errors_total", snap.reconcile_errors),
    ]
    if snap.outbox is not None:
        out.append(("supervisor_listeners_outbox_failing", int(snap.outbox.failing)))
        out.append(("supervisor_listeners_outbox_spooled_alerts", snap.outbox.spooled))
        out.append(("supervisor_listeners_outbox_dropped_alerts", snap.outbox.dropped))
    if snap.memmon_unreadable is not None:
        out.append(
            ("supervisor_listeners_memmon_unreadable_processes", len(snap.memmon_unreadable))
        )
    return out


def escape_label(value: str) -> str:
    """Escape a label value for the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(name: str) -> str:
    kind, help_text = FAMILIES[name]
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


_HEADERS = {name: _header(name) for name in FAMILIES}


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class Renderer:
    """Writes the exposition text, caching what only changes with events.

    A process's label string and its eight state lines are cached; a scrape then joins
    cached strings plus a few formatted numbers per process. Thread-safe: caches are only
    ever replaced or added to with single dict operations.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._labels: dict[tuple[str, str], str] = {}
        self._states: dict[tuple[str, str], str] = {}

    def labels(self, group: str, name: str) -> str:
        key = (group, name)
        text = self._labels.get(key)
        if text is None:
            if len(self._labels) > 20000:
                self._labels = {}
                self._states = {}
            text = f'group="{escape_label(group)}",name="{escape_label(name)}"'
            self._labels[key] = text
        return text

    def state_lines(self, labels: str, state: str) -> str:
        key = (labels, state)
        text = self._states.get(key)
        if text is None:
            text = "".join(
                f'supervisord_process_state{{{labels},state="{s}"}} {1 if s == state else 0}\n'
                for s in STATES
            )
            if state not in STATES:
                text += f'supervisord_process_state{{{labels},state="{escape_label(state)}"}} 1\n'
            self._states[key] = text
        return text

    def render(
        self, snap: Snapshot, usages: Mapping[str, Usage], started: float | None = None
    ) -> str:
        """The whole /metrics body; ``started`` is the perf_counter time the scrape began."""
        t0 = self.clock() if started is None else started
        out: list[str] = [_HEADERS["supervisord_up"], f"supervisord_up {1 if snap.up else 0}\n"]
        if snap.up and snap.version is not None:
            out.append(_HEADERS["supervisord_info"])
            out.append(
                f'supervisord_info{{version="{escape_label(snap.version)}",'
                f'identification="{escape_label(snap.identification or "")}"}} 1\n'
            )
        procs = snap.processes if snap.up else ()
        if procs:
            labels = [self.labels(p.group, p.name) for p in procs]
            pairs = list(zip(labels, procs, strict=True))
            out.append(_HEADERS["supervisord_process_state"])
            out.extend(self.state_lines(lb, p.state) for lb, p in pairs)
            self._family(
                out,
                "supervisord_process_start_time_seconds",
                ((lb, p.start_time) for lb, p in pairs if p.start_time is not None),
            )
            self._family(
                out,
                "supervisord_process_exit_status",
                ((lb, p.exit_status) for lb, p in pairs if p.exit_status is not None),
            )
            self._family(
                out, "supervisord_process_restarts_total", ((lb, p.restarts) for lb, p in pairs)
            )
            self._family(
                out,
                "supervisord_process_unexpected_exits_total",
                ((lb, p.unexpected_exits) for lb, p in pairs),
            )
            self._family(
                out,
                "supervisord_process_exits_total",
                ((f'{lb},reason="{r}"', n) for lb, p in pairs for r, n in p.exits),
            )
            self._family(out, "supervisord_process_fatal_total", ((lb, p.fatal) for lb, p in pairs))
            used = [(lb, u) for lb, p in pairs if (u := usages.get(p.full_name)) is not None]
            self._family(
                out, "supervisord_process_memory_bytes", ((lb, u.memory_bytes) for lb, u in used)
            )
            self._family(
                out,
                "supervisord_process_cpu_seconds_total",
                ((lb, u.cpu_seconds) for lb, u in used),
            )
            self._family(
                out,
                "supervisord_process_memory_limit_bytes",
                ((lb, p.memory_limit) for lb, p in pairs if p.memory_limit is not None),
            )
            self._family(
                out,
                "supervisord_process_memory_judged_bytes",
                ((lb, u.judged_bytes) for lb, u in used if u.judged_bytes is not None),
            )
            self._family(
                out,
                "supervisord_process_memory_restarts_total",
                ((lb, p.memory_restarts) for lb, p in pairs),
            )
            self._family(
                out,
                "supervisord_process_memory_unreadable",
                ((lb, int(p.memory_unreadable)) for lb, p in pairs if _memmon_judges(p)),
            )
            self._family(
                out,
                "supervisord_process_crash_looping",
                ((lb, int(p.crash_looping)) for lb, p in pairs),
            )
            for family, field in (
                ("supervisord_process_probe_success", "probe_success"),
                ("supervisord_process_heartbeat_age_seconds", "heartbeat_age"),
                ("supervisord_process_backoff_seconds", "backoff_seconds"),
            ):
                rows = [(lb, v) for lb, p in pairs if (v := getattr(p, field)) is not None]
                if rows:
                    self._family(out, family, rows)
        for name, value in _scalars(snap):
            out.append(_HEADERS[name])
            out.append(f"{name} {value}\n")
        sinks = [(f'sink="{escape_label(n)}"', p, f) for n, p, f in snap.alert_sinks]
        self._family(out, "supervisor_listeners_alerts_pending", ((lb, p) for lb, p, _ in sinks))
        self._family(
            out,
            "supervisor_listeners_alert_delivery_failures_total",
            ((lb, f) for lb, _, f in sinks),
        )
        out.append(_HEADERS["supervisord_exporter_scrape_duration_seconds"])
        out.append(f"supervisord_exporter_scrape_duration_seconds {self.clock() - t0:.6f}\n")
        return "".join(out)

    @staticmethod
    def _family(out: list[str], name: str, rows: Iterable[tuple[str, float]]) -> None:
        lines = [f"{name}{{{lb}}} {_num(v)}\n" for lb, v in rows]
        if lines:
            out.append(_HEADERS[name])
            out.extend(lines)


def _memmon_judges(p: ProcessView) -> bool:
    """memmon watches the process (it announced a ceiling) or said it cannot read it."""
    return p.memory_limit is not None or p.memory_unreadable


# --------------------------------------------------------------------------- client_python


def collector(source: Callable[[], tuple[Snapshot, Mapping[str, Usage]]]) -> Any:
    """A prometheus_client collector over ``source``; families are built on every collect()."""
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )

    def family(name: str, labels: list[str]) -> Any:
        kind, help_text = FAMILIES[name]
        if kind == "counter":
            return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
        return GaugeMetricFamily(name, help_text, labels=labels)

    class ExporterCollector:
        def collect(self) -> Iterator[Metric]:
            t0 = time.perf_counter()
            snap, usages = source()
            up = family("supervisord_up", [])
            up.add_metric([], 1 if snap.up else 0)
            yield up
            if snap.up and snap.version is not None:
                info = family("supervisord_info", ["version", "identification"])
                info.add_metric([snap.version, snap.identification or ""], 1)
                yield info
            procs = snap.processes if snap.up else ()
            if procs:
                gn = ["group", "name"]
                fams = {n: family(n, gn) for n in FAMILIES if n.startswith("supervisord_process")}
                state = fams["supervisord_process_state"] = family(
                    "supervisord_process_state", [*gn, "state"]
                )
                exits = fams["supervisord_process_exits_total"] = family(
                    "supervisord_process_exits_total", [*gn, "reason"]
                )
                for p in procs:
                    lv = [p.group, p.name]
                    for reason, count in p.exits:
                        exits.add_metric([*lv, reason], count)
                    for s in STATES if p.state in STATES else (*STATES, p.state):
                        state.add_metric([*lv, s], 1 if s == p.state else 0)
                    rows: dict[str, float | None] = {
                        "supervisord_process_start_time_seconds": p.start_time,
                        "supervisord_process_exit_status": p.exit_status,
                        "supervisord_process_restarts_total": p.restarts,
                        "supervisord_process_unexpected_exits_total": p.unexpected_exits,
                        "supervisord_process_fatal_total": p.fatal,
                        "supervisord_process_memory_limit_bytes": p.memory_limit,
                        "supervisord_process_memory_restarts_total": p.memory_restarts,
                        "supervisord_process_crash_looping": int(p.crash_looping),
                        "supervisord_process_memory_unreadable": (
                            int(p.memory_unreadable) if _memmon_judges(p) else None
                        ),
                        "supervisord_process_probe_success": p.probe_success,
                        "supervisord_process_heartbeat_age_seconds": p.heartbeat_age,
                        "supervisord_process_backoff_seconds": p.backoff_seconds,
                    }
                    usage = usages.get(p.full_name)
                    if usage is not None:
                        rows["supervisord_process_memory_bytes"] = usage.memory_bytes
                        rows["supervisord_process_cpu_seconds_total"] = usage.cpu_seconds
                        rows["supervisord_process_memory_judged_bytes"] = usage.judged_bytes
                    for n, v in rows.items():
                        if v is not None:
                            fams[n].add_metric(lv, v)
                yield from (f for f in fams.values() if f.samples)
            for n, v in _scalars(snap):
                fam = family(n, [])
                fam.add_metric([], v)
                yield fam
            if snap.alert_sinks:
                pending = family("supervisor_listeners_alerts_pending", ["sink"])
                failures = family("supervisor_listeners_alert_delivery_failures_total", ["sink"])
                for sink, waiting, failed in snap.alert_sinks:
                    pending.add_metric([sink], waiting)
                    failures.add_metric([sink], failed)
                yield pending
                yield failures
            dur = family("supervisord_exporter_scrape_duration_seconds", [])
            dur.add_metric([], time.perf_counter() - t0)
            yield dur

    return ExporterCollector()
