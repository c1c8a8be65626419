"""Basic auth's timing: unknown user vs wrong password, cached vs uncached, under guessing.

    python bench/auth.py [--requests 20] [--cost 10] [--guessers 32] [--guess-rounds 3]

One real supervisord runs the real exporter as an event listener with a web config of one
bcrypt user (``--cost``, 10 as htpasswd -B makes it). Every request is a new HTTP connection
to ``/metrics`` on loopback, timed from connect to the last byte of the answer:

- no credentials (401 without any bcrypt: the floor of a request);
- (a) a user that is not in the file, (b) the user with a wrong password, interleaved so load
  changes hit both alike; their ratio is ~1.0 when user names do not leak by timing;
- (c) the right password, first request after the exporter starts (uncached: one bcrypt),
  the exporter restarted through supervisord before each one; (d) the right password again
  (cached). Medians and p90 of ``--requests`` requests each, ratio cached / uncached.

Then ``--guessers`` threads send wrong passwords (half of them for unknown users) as fast as
they are answered for ``--guess-seconds``, after a fresh restart of the exporter: the first
right-password scrape (uncached, it waits its turn for bcrypt behind the guesses), then cached
ones every 0.25 s; their statuses and times, the guesses answered per second and the exporter's
CPU (bcrypt runs one at a time: about one core at most).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import secrets
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.support import PYTHON, Supervisord, free_port, wait_for  # noqa: E402

USER = "prometheus"
PASSWORD = secrets.token_urlsafe(16)
TICKS = os.sysconf("SC_CLK_TCK")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(port: int, authorization: str | None, path: str = "/metrics") -> tuple[int, float]:
    """(status, seconds) of one GET on a new connection."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization else {})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def ms(values: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    ordered = sorted(values) or [float("nan")]
    p90 = ordered[max(0, int(len(ordered) * 0.9 + 0.5) - 1)]
    return statistics.median(ordered) * 1000, p90 * 1000


class Exporter:
    def __init__(self, sup: Supervisord, port: int) -> None:
        self.sup, self.port = sup, port

    def restart(self) -> int:
        """A fresh exporter process (an empty auth cache); its pid once it answers."""
        self.sup.client.stop("exporter:exporter", wait=True)
        self.sup.client.start("exporter:exporter", wait=True)
        # poll without credentials: a 401 that costs no bcrypt and caches nothing
        wait_for(lambda: request(self.port, None)[0] == 401, 60, 0.05, "the exporter answers")
        return int(self.sup.info("exporter:exporter")["pid"])


def expect(status: int, want: int, what: str) -> None:
    if status != want:
        raise SystemExit(f"{what}: got HTTP {status}, expected {want}")


def timings(args: argparse.Namespace, exp: Exporter) -> dict[str, list[float]]:
    right = basic(USER, PASSWORD)
    out: dict[str, list[float]] = {k: [] for k in ("none", "unknown", "wrong", "first", "cached")}
    exp.restart()
    for _ in range(3):  # warm-up, nothing cached by it
        request(exp.port, basic("nobody", "x"))
        request(exp.port, basic(USER, "x"))
    for i in range(args.requests):
        status, t = request(exp.port, None)
        expect(status, 401, "no credentials")
        out["none"].append(t)
        # alternate which of the two goes first, so neither always follows the other
        pair = [("unknown", f"user-{secrets.token_hex(4)}"), ("wrong", USER)]
        for kind, user in pair if i % 2 else pair[::-1]:
            status, t = request(exp.port, basic(user, secrets.token_hex(8)))
            expect(status, 401, kind)
            out[kind].append(t)
    for _ in range(args.requests):
        exp.restart()
        status, t = request(exp.port, right)
        expect(status, 200, "right password, first")
        out["first"].append(t)
    for _ in range(args.requests):
        status, t = request(exp.port, right)
        expect(status, 200, "right password, cached")
        out["cached"].append(t)
    return out


@dataclass
class Guessing:
    first: list[tuple[int, float]]  # one per round, each after a restart
    cached: list[tuple[int, float]]
    counts: dict[str, int]
    elapsed: float
    cpu: float


def under_guessing(args: argparse.Namespace, exp: Exporter) -> Guessing:
    """Rounds of: restart, guessers start, the first right scrape, cached scrapes meanwhile."""
    right = basic(USER, PASSWORD)
    g = Guessing([], [], {}, 0.0, 0.0)
    lock = threading.Lock()

    def guess(n: int, stop: threading.Event) -> None:
        while not stop.is_set():
            user = USER if n % 2 else f"user-{secrets.token_hex(4)}"
            try:
                status = str(request(exp.port, basic(user, secrets.token_hex(8)))[0])
            except OSError as exc:
                status = type(exc).__name__
            with lock:
                g.counts[status] = g.counts.get(status, 0) + 1

    for _ in range(args.guess_rounds):
        pid = exp.restart()
        stop = threading.Event()
        threads = [
            threading.Thread(target=guess, args=(n, stop), daemon=True)
            for n in range(args.guessers)
        ]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        for t in threads:
            t.start()
        time.sleep(1.0)  # the guesses queue up for bcrypt first
        g.first.append(request(exp.port, right))
        t1 = time.monotonic()
        while time.monotonic() - t1 < args.guess_seconds:
            g.cached.append(request(exp.port, right))
            time.sleep(0.25)
        g.elapsed += time.monotonic() - t0
        g.cpu += cpu_seconds(pid) - cpu0
        stop.set()
        for t in threads:
            t.join(70)
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="requests per kind")
    ap.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash")
    ap.add_argument("--guessers", type=int, default=32, help="concurrent guessing threads")
    ap.add_argument("--guess-seconds", type=float, default=5.0, help="cached scrapes per round")
    ap.add_argument("--guess-rounds", type=int, default=3)
    args = ap.parse_args()

    port = free_port()
    flags = f"--web.listen-address 127.0.0.1:{port} --web.config.file %(here)s/web.yml"
    sup = Supervisord(
        f"""
        [eventlistener:exporter]
        command={PYTHON} -m listeners.exporter {flags}
        events=PROCESS_STATE,TICK_60
        startsecs=0
        buffer_size=64
        environment=PYTHONPATH="{ROOT}"
        """
    )
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(args.cost)).decode()
    (sup.dir / "web.yml").write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    t0 = time.perf_counter()
    bcrypt.checkpw(PASSWORD.encode(), hashed.encode())
    one = (time.perf_counter() - t0) * 1000
    try:
        sup.start()
        exp = Exporter(sup, port)
        print(
            f"bcrypt cost {args.cost}: one checkpw in this process {one:.1f} ms"
            f"  (machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
        )
        out = timings(args, exp)
        print(f"\n{args.requests} requests each, wall time per request (new connection each)")
        print(f"{'':44}{'median ms':>10}{'p90 ms':>10}")
        rows = (
            ("no credentials (no bcrypt)", "none"),
            ("(a) unknown user", "unknown"),
            ("(b) known user, wrong password", "wrong"),
            ("(c) right password, first (uncached)", "first"),
            ("(d) right password, repeated (cached)", "cached"),
        )
        for label, key in rows:
            med, p90 = ms(out[key])
            print(f"{label:44}{med:>10.2f}{p90:>10.2f}")
        unknown, wrong = ms(out["unknown"])[0], ms(out["wrong"])[0]
        first, cached = ms(out["first"])[0], ms(out["cached"])[0]
        print(f"ratio unknown / known-wrong (median): {unknown / wrong:.3f}  (1.0: no leak)")
        print(f"ratio cached / uncached (median):     {cached / first:.3f}")

        g = under_guessing(args, exp)
        print(
            f"\n{args.guessers} guessing threads (wrong passwords, half for unknown users),"
            f" {args.guess_rounds} rounds of {g.elapsed / args.guess_rounds:.1f} s,"
            " each on a fresh exporter"
        )
        answered = sum(g.counts.values())
        print(
            f"  guesses answered: {answered} ({answered / g.elapsed:.1f}/s,"
            f" {g.elapsed / answered * 1000:.0f} ms apart),"
            f" by status: {dict(sorted(g.counts.items()))}"
        )
        print(f"  exporter CPU: {g.cpu:.2f} s = {g.cpu / g.elapsed:.2f} cores")
        firsts = ", ".join(f"HTTP {s} in {t * 1000:.0f} ms" for s, t in g.first)
        print(f"  right password, first after the start (uncached): {firsts}")
        statuses = [s for s, _ in g.cached]
        med, p90 = ms([t for _, t in g.cached])
        print(
            f"  right password, cached: {len(g.cached)} scrapes,"
            f" {statuses.count(200)} got 200, median {med:.2f} ms, p90 {p90:.2f} ms,"
            f" max {max((t for _, t in g.cached), default=0) * 1000:.2f} ms"
        )
    finally:
        sup.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
