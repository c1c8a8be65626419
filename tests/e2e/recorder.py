"""A minimal listener built on listeners.core.protocol: records every event it acknowledges.

    python recorder.py OUTFILE [--print-something]

Each line of OUTFILE is ``serial poolserial eventname payload_chars lost``. With
``--print-something`` it also calls print() on every event, to prove the guarded stdout
keeps stray writes away from supervisord.
"""

from __future__ import annotations

import sys

from listeners.core import protocol


class Recorder(protocol.Handler):
    def __init__(self, path: str, noisy: bool) -> None:
        self.out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.noisy = noisy
        self.lost = 0

    def handle(self, event: protocol.Event) -> None:
        if self.noisy:
            print("stray output that must not reach supervisord")
        h = event.header
        self.out.write(
            f"{h.serial} {h.poolserial} {h.eventname} {len(event.payload)} {self.lost}\n"
        )
        self.out.flush()
        self.lost = 0

    def on_events_lost(self, count: int, event: protocol.Event) -> None:
        self.lost = count

    def close(self) -> None:
        self.out.close()


if __name__ == "__main__":
    sys.exit(protocol.run(Recorder(sys.argv[1], "--print-something" in sys.argv)))
