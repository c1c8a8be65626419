"""Benchmark: crashmail's log patterns under a PHP worker that logs thousands of lines a second.

One real supervisord per rate runs a real php-cli worker that writes plain lines, PHP warnings
and, every 2 seconds, a PHP fatal error to stderr (stderr_events_enabled=true), and crashmail
as the example ships it (--pattern php --pattern python, PROCESS_LOG_STDERR, buffer_size=1024).
Figures per rate: lines written per second, fatal errors written and log_pattern incidents
recorded (every one must be caught), CPU of crashmail and supervisord, and whether
supervisord's log says "overflowed" (events lost). superlance has no peer: none of its
listeners reads PROCESS_LOG events (crashmail, crashmailbatch and fatalmailbatch watch process
states, memmon memory, httpok HTTP), so there is nothing to run beside it.

    python bench/crashmail_logs.py [--rates 1000,5000,20000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.support import Supervisord, wait_for  # noqa: E402

# Writes RATE lines a second to stderr for SECONDS, in 10 ms slices, one write per line;
# 1 in 50 is a PHP warning, a fatal error every 2 s (the worker keeps running); then idles.
WORKER = r"""<?php
[$rate, $seconds, $done] = [(int) $argv[1], (float) $argv[2], $argv[3]];
$start = microtime(true); $n = 0; $fatal = 0; $nextFatal = $start + 1;
while (($now = microtime(true)) - $start < $seconds) {
    $due = (int) (($now - $start) * $rate);
    for (; $n < $due; $n++) {
        if ($n % 50 === 49) {
            fwrite(STDERR, "PHP Warning:  Undefined array key \"id\" in /app/job.php on line 12\n");
        } else {
            fwrite(STDERR, "[job] processed message $n of the import queue, 42 rows\n");
        }
    }
    if ($now >= $nextFatal) {
        $fatal++;
        $nextFatal += 2;
        fwrite(STDERR, "PHP Fatal error:  Uncaught RuntimeException: job $fatal failed"
            . " in /app/job.php:7\nStack trace:\n#0 {main}\n  thrown in /app/job.php on line 7\n");
    }
    usleep(10000);
}
$took = microtime(true) - $start;
file_put_contents($done, json_encode(['lines' => $n, 'fatal' => $fatal, 'seconds' => $took]));
sleep(3600);
"""


def crashmail_command(outbox: Path, alerts: Path) -> str:
    """crashmail's command line from the example's listeners.d/crashmail.conf, sinks swapped."""
    conf = REPO / "example/docker/supervisord/listeners.d/crashmail.conf"
    line = next(ln for ln in conf.read_text().splitlines() if ln.startswith("command="))
    args = line.removeprefix("command=").split(" ")
    keep: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--sink", "--outbox"):
            skip = True
            continue
        keep.append(a)
    exe = shutil.which("supervisor-crashmail", path=str(Path(sys.executable).parent))
    assert exe, "supervisor-crashmail is not installed in this virtualenv"
    return " ".join([exe, *keep[1:], "--sink", f"file:{alerts}", "--outbox", str(outbox)])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def incidents_by_pattern(path: Path) -> dict[str, int]:
    """log_pattern incidents in crashmail's outbox, per pattern (each match is one incident)."""
    with sqlite3.connect(path) as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM incidents")]
    found: dict[str, int] = {}
    for b in bodies:
        if b["kind"] == "log_pattern":
            found[b["details"]["pattern"]] = found.get(b["details"]["pattern"], 0) + 1
    return found


def messages(path: Path) -> int:
    """Messages made from them by flood control (what a person receives per sink)."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


def run(rate: int, seconds: float) -> dict[str, float]:
    scratch = Path(f"/tmp/bench-logs-{os.getpid()}-{rate}")
    scratch.mkdir(exist_ok=True)
    worker, done = scratch / "worker.php", scratch / "done.json"
    worker.write_text(WORKER)
    cm_log = scratch / "crashmail.log"
    cm_log.touch()
    sup = Supervisord(
        f"""
        [eventlistener:crashmail]
        command={crashmail_command(scratch / "outbox.sqlite", scratch / "alerts.jsonl")}
        events=PROCESS_STATE,REMOTE_COMMUNICATION,TICK_60,PROCESS_LOG_STDERR
        buffer_size=1024
        stderr_logfile={cm_log}

        [program:chatty]
        command=php -d memory_limit=16M {worker} {rate} {seconds} {done}
        autostart=false
        startsecs=1
        stderr_events_enabled=true
        """
    )
    try:
        sup.start()
        wait_for(lambda: sup.info("crashmail:crashmail")["statename"] == "RUNNING", 30)
        assert sup.proc is not None
        cm_pid = sup.info("crashmail:crashmail")["pid"]
        cpu0 = cpu_seconds(sup.proc.pid), cpu_seconds(cm_pid)
        sup.client.call("supervisor.startProcess", "chatty", True)
        wait_for(done.exists, seconds + 30, what="worker done")
        time.sleep(5)  # the grace of the last matches
        cpu1 = cpu_seconds(sup.proc.pid), cpu_seconds(cm_pid)
        result = json.loads(done.read_text())
        patterns = incidents_by_pattern(scratch / "outbox.sqlite")
        overflowed = sup.log.read_text().count("overflowed")
        return {
            "lines_per_s": result["lines"] / result["seconds"],
            "fatal": result["fatal"],
            "fatal_alerts": patterns.get("php_fatal", 0),
            "storm_alerts": patterns.get("php_warning", 0),
            "messages": messages(scratch / "outbox.sqlite"),
            "crashmail_cpu": (cpu1[1] - cpu0[1]) / result["seconds"],
            "supervisord_cpu": (cpu1[0] - cpu0[0]) / result["seconds"],
            "overflowed": overflowed,
        }
    finally:
        sup.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000,20000", help="lines per second, comma list")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    print(
        f"crashmail --pattern php --pattern python, one php-cli worker logging to stderr"
        f" for {args.seconds:g}s (superlance: no listener reads log events, no peer)"
    )
    print(
        f"  {'target':>7} {'lines/s':>8} {'fatal':>6} {'caught':>7} {'storms':>7} {'messages':>9}"
        f" {'crashmail CPU':>14} {'supervisord CPU':>16} {'overflowed':>10}"
    )
    for rate in (int(r) for r in args.rates.split(",")):
        r = run(rate, args.seconds)
        print(
            f"  {rate:>7} {r['lines_per_s']:>8.0f} {r['fatal']:>6.0f} {r['fatal_alerts']:>7.0f}"
            f" {r['storm_alerts']:>7.0f} {r['messages']:>9.0f}"
            f" {r['crashmail_cpu']:>13.0%} {r['supervisord_cpu']:>16.0%} {r['overflowed']:>10.0f}"
        )


if __name__ == "__main__":
    main()
