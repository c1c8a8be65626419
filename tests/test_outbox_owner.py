"""One outbox per supervisord: its claim is supervisord's server URL and its ``identifier=``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from listeners import crashmail
from listeners.core.supervisor import SupervisorError
from listeners.notify.outbox import Outbox, OutboxOwnerError, Owner, ask_identifier

URL = "unix:///run/supervisor.sock"


def stored_claim(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT identity FROM owner").fetchone()[0])


def old_outbox(path: Path, url: str = URL) -> None:
    """An outbox claimed by a crashmail that stored the server URL alone."""
    Outbox(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO owner (one, identity) VALUES (1, ?)", (url,))


class TestClaim:
    def test_an_old_url_only_claim_is_migrated_by_the_same_url(self, tmp_path):
        """A claim of the URL alone, opened by a crashmail of that URL: taken over silently,
        stored in the new form, and from then on another identifier is refused."""
        path = tmp_path / "o.sqlite"
        old_outbox(path)
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        assert {"identifier": "web-1", "url": URL} == json.loads(stored_claim(path))
        with pytest.raises(OutboxOwnerError):
            Outbox(str(path)).claim(Owner(URL, "web-2"))

    def test_an_old_claim_of_another_url_is_refused_and_kept(self, tmp_path):
        """A URL-only claim of another supervisord is not migrated: refused, left as it is."""
        path = tmp_path / "o.sqlite"
        old_outbox(path, "unix:///other/s.sock")
        with pytest.raises(OutboxOwnerError) as exc:
            Outbox(str(path)).claim(Owner(URL, "web-1"))
        assert "another supervisord (unix:///other/s.sock)" in str(exc.value)
        assert "unix:///other/s.sock" == stored_claim(path)

    def test_the_same_url_with_another_identifier_is_refused(self, tmp_path):
        """Two containers sharing a state volume: same URL, different identifier=; the second
        is refused with a line naming the owner, itself and what to do."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        with pytest.raises(OutboxOwnerError) as exc:
            Outbox(str(path)).claim(Owner(URL, "web-2"))
        message = str(exc.value)
        assert (
            f"the outbox {path} belongs to the crashmail of another supervisord ('web-1' at"
            f" {URL}), not to this one ('web-2' at {URL}); give this one its own --outbox PATH"
        ) == message
        assert "\n" not in message
        assert (Owner(URL, "web-1"), Owner(URL, "web-2")) == (exc.value.owner, exc.value.mine)

    def test_the_same_url_and_identifier_is_accepted(self, tmp_path):
        """The same supervisord opens its outbox again (a restart): no error, claim unchanged."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        before = stored_claim(path)
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        assert before == stored_claim(path)

    def test_another_url_is_refused_with_the_default_as_a_way_out(self, tmp_path):
        """Another URL has another default outbox: the advice says so."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner("unix:///a.sock", "supervisor"))
        with pytest.raises(OutboxOwnerError) as exc:
            Outbox(str(path)).claim(Owner("unix:///b.sock", "supervisor"))
        assert str(exc.value).endswith(
            "give this one its own --outbox PATH, or leave --outbox out for the default"
        )

    def test_an_unknown_identifier_is_checked_by_url_only(self, tmp_path):
        """supervisord did not say its identifier: the same URL is accepted and the stored
        identifier kept; another URL is still refused."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        Outbox(str(path)).claim(Owner(URL))
        assert "web-1" == Owner.decode(stored_claim(path)).identifier
        with pytest.raises(OutboxOwnerError):
            Outbox(str(path)).claim(Owner("unix:///b.sock"))

    def test_a_claim_without_identifier_is_completed_later(self, tmp_path):
        """First opened while supervisord did not answer: the next open with an identifier
        completes the claim."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner(URL))
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        assert Owner(URL, "web-1") == Owner.decode(stored_claim(path))


class TestOwner:
    @pytest.mark.parametrize(
        "owner", [Owner(URL, "web-1"), Owner(URL), Owner("http://127.0.0.1:9001", "")]
    )
    def test_encode_and_decode_round_trip(self, owner):
        """What is stored reads back as the same owner."""
        assert owner == Owner.decode(owner.encode())

    @pytest.mark.parametrize("text", [URL, "a", "{not json", '["x"]', '{"identifier": "x"}'])
    def test_anything_else_stored_is_a_url_only_claim(self, text):
        """A bare URL (the old form) or anything unreadable is a claim of that text alone."""
        assert Owner(text) == Owner.decode(text)


class TestAskIdentifier:
    def test_the_answer_is_the_identifier(self):
        """getIdentification's answer is used as it is."""
        assert "web-1" == ask_identifier(lambda: "web-1")

    def test_no_answer_is_none_and_logged(self, capsys):
        """supervisord unreachable (or no rpcinterface): None, and a warning saying so."""

        def fail() -> str:
            raise SupervisorError("cannot reach supervisord")

        assert ask_identifier(fail) is None
        err = capsys.readouterr().err
        assert "outbox.owner_unchecked" in err
        assert "by server URL only" in err


class FakeRpc:
    identifier = "web-2"

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def identification(self) -> str:
        return self.identifier

    def send_remote_comm(self, type_: str, data: str) -> None:
        """Not reached: the outbox is refused first."""


class TestMain:
    def test_crashmail_of_another_identifier_exits_2_with_one_line(
        self, tmp_path, monkeypatch, capsys
    ):
        """crashmail's main asks supervisord's identifier; an outbox of the same URL and
        another identifier is a usage error (exit 2) in one line, no traceback."""
        path = tmp_path / "o.sqlite"
        Outbox(str(path)).claim(Owner(URL, "web-1"))
        monkeypatch.setattr(crashmail, "Supervisor", FakeRpc)
        monkeypatch.setenv("SUPERVISOR_SERVER_URL", URL)
        with pytest.raises(SystemExit) as exc:
            crashmail.main(["--outbox", str(path), "--sink", f"file:{tmp_path}/a.jsonl"])
        err = capsys.readouterr().err
        assert 2 == exc.value.code
        (line,) = [ln for ln in err.splitlines() if "error:" in ln]
        assert f"('web-1' at {URL}), not to this one ('web-2' at {URL})" in line
        assert "give this one its own --outbox PATH" in line
        assert "Traceback" not in err

    def test_crashmail_migrates_an_old_outbox_of_its_url(self, tmp_path):
        """open_outbox on an outbox claimed by URL alone: the claim gains the identifier."""
        path = tmp_path / "o.sqlite"
        old_outbox(path)
        config = crashmail.parse_args(["--outbox", str(path), "--server-url", URL], {})
        box = crashmail.open_outbox(
            config,
            crashmail.build_parser(),
            lambda h: None,
            ask_identifier(FakeRpc(config.connection).identification),
        )
        box.close()
        assert Owner(URL, "web-2") == Owner.decode(stored_claim(path))


class TestDefaultPath:
    def test_the_default_outbox_is_still_named_for_the_url_alone(self, tmp_path):
        """Existing default outboxes stay where they are: the name is sha256(URL), whatever
        the identifier."""
        config = crashmail.parse_args(["--server-url", URL], {"XDG_STATE_HOME": str(tmp_path)})
        ident = hashlib.sha256(URL.encode()).hexdigest()[:12]
        expected = tmp_path / "supervisor-listeners" / f"crashmail-outbox-{ident}.sqlite"
        assert str(expected) == config.outbox
        assert URL == config.identity
