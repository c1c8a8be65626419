"""The file sink on a real tmpfs that fills up in the middle of a line.

A full disk takes the first bytes of a record (the rest of the file's last page) and refuses
the rest: the sink must cut the fragment off again and fail the delivery, so the outbox keeps
the alert and the file keeps only whole JSON lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from listeners.notify.alert import Alert
from listeners.notify.sinks import FileSink, SinkError
from tests.e2e.support import small_tmpfs

PAGE = os.sysconf("SC_PAGE_SIZE")


def fill(disk: Path) -> Path:
    """Take every free page of ``disk`` with one filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * PAGE):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_record_cut_by_a_full_disk_is_removed_and_sent_again_later(tmp_path):
    with small_tmpfs(tmp_path / "disk", "size=64k") as disk:
        out = disk / "alerts.jsonl"
        sink = FileSink(str(out))
        sink.send(Alert(kind="crash", host="h", group="g", name="first", key="k0"))
        # pad the file's last page until 200 bytes are left in it, then fill the disk: the
        # next record (well over 200 bytes) gets its first 200 bytes, then ENOSPC
        used = out.stat().st_size
        with out.open("a") as fh:
            pad = PAGE - 200 - used % PAGE - 1
            fh.write(json.dumps({"pad": "x" * max(0, pad - 11)}) + "\n")
        before = out.read_bytes()
        filler = fill(disk)
        big = Alert(kind="crash", host="h", group="g", name="second", key="k1", message="m" * 2000)
        with pytest.raises(SinkError, match="cut off again; the alert stays in the outbox"):
            sink.send(big)
        assert before == out.read_bytes()  # no fragment left behind
        filler.unlink()
        sink.send(big)
        got = lines(out)
        assert ["first", None, "second"] == [r.get("name") for r in got]
        assert 1 == sum(r.get("key") == "k1" for r in got)


def test_a_line_cut_by_someone_else_does_not_swallow_the_next_record(tmp_path):
    """A file that ends mid-line (a crash of another writer): the next record starts on a
    line of its own, so it stays readable."""
    out = tmp_path / "alerts.jsonl"
    out.write_text('{"kind": "crash", "na')
    FileSink(str(out)).send(Alert(kind="crash", host="h", group="g", name="w", key="k"))
    last = out.read_text().splitlines()[-1]
    assert "w" == json.loads(last)["name"]
