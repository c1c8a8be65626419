"""The example stack's catch-all SMTP server: accepts every message and keeps it as a file.

The PHP mail senders deliver to it, and crashmail's SMTP sink does too, so mail is real end to
end without a mail server on the machine. Each message is written to the mail directory as
<time>-<n>.eml (written under another name and renamed, so a reader never sees half a mail).
Listens on loopback only; it relays nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class KeepEveryMail:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        n = next(self.counter)
        name = f"{time.time():.6f}-{os.getpid()}-{n}.eml"
        tmp = self.directory / f".{name}.tmp"
        to = ", ".join(envelope.rcpt_tos)
        head = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {to}\r\n"
        tmp.write_bytes(head.encode() + envelope.original_content)
        tmp.rename(self.directory / name)
        sys.stderr.write(f"mail_catcher: kept {name} for {', '.join(envelope.rcpt_tos)}\n")
        sys.stderr.flush()
        return "250 OK: kept"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:2525", metavar="HOST:PORT")
    parser.add_argument("--maildir", required=True, metavar="DIR")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"invalid --listen {args.listen!r}: expected HOST:PORT such as 127.0.0.1:2525")
    directory = Path(args.maildir)
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(KeepEveryMail(directory), hostname=host, port=int(port))
    controller.start()
    sys.stderr.write(f"mail_catcher: listening on {host}:{port}, mail kept in {directory}\n")
    sys.stderr.flush()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
