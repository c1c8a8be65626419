"""The memmon bus schema: one encoder, one decoder, strict about what it accepts."""

from __future__ import annotations

import json

import pytest

from listeners.core import bus
from listeners.core.bus import MemoryLimits, MemoryRestart, RestartsExhausted, decode, encode


class TestBus:
    @pytest.mark.parametrize(
        "message",
        [
            MemoryLimits(host="h", limits={"g:a": 16 * 1024 * 1024}, measure="pss"),
            MemoryRestart(
                host="h", group="g", name="a", pid=12, measured_bytes=20, limit_bytes=16, rule="any"
            ),
            RestartsExhausted(
                host="h",
                group="g",
                name="a",
                restarts=5,
                window_seconds=3600.0,
                measured_bytes=20,
                limit_bytes=16,
            ),
            bus.RestartsHeld("h", "php", over=32, judged=32, median_bytes=19, limit_bytes=16),
            bus.ProcessesUnreadable(host="h", processes=["g:a"]),
        ],
    )
    def test_round_trip(self, message):
        """decode(encode(m)) == m for every message kind."""
        assert message == decode(encode(message))

    def test_a_held_group_reads_as_memmons_sentence(self):
        """RestartsHeld.describe() says how many, the measure, the median and what to try."""
        held = bus.RestartsHeld("h", "php_mail", 32, 32, int(18.1 * 2**20), 16 * 2**20)
        assert (
            "32 of 32 php_mail over 16.0 MiB rss (median 18.1 MiB): nothing restarted; the"
            " measure or the ceiling looks wrong - try --measure pss"
        ) == held.describe()

    def test_unreadable_processes_must_be_a_list_of_names(self):
        """processes_unreadable with a non-list is refused with the field named."""
        with pytest.raises(ValueError, match="processes"):
            decode('{"v":1,"kind":"processes_unreadable","host":"h","processes":3}')

    def test_encoding_is_one_ascii_line(self):
        """Messages fit a REMOTE_COMMUNICATION payload without newlines or non-ASCII."""
        text = encode(MemoryLimits(host="hôte", limits={"g:é": 1}))
        assert "\n" not in text
        assert text.isascii()

    @pytest.mark.parametrize(
        ("text", "match"),
        [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            ('{"v": 2, "kind": "memory_limits"}', "schema version"),
            ('{"v": 1, "kind": "nope"}', "unknown kind"),
            ('{"v": 1, "kind": "memory_restart", "host": "h"}', "lacks"),
            (
                json.dumps(
                    {
                        "v": 1,
                        "kind": "memory_restart",
                        "host": "h",
                        "group": "g",
                        "name": "a",
                        "pid": "12",
                        "measured_bytes": 1,
                        "limit_bytes": 1,
                        "rule": "any",
                    }
                ),
                "whole number",
            ),
            ('{"v": 1, "kind": "memory_limits", "host": "h", "limits": {"a": "x"}}', "limits"),
            ('{"v": 1, "kind": "memory_limits", "host": "h", "limits": {"a": true}}', "limits"),
            (
                '{"v":1,"kind":"delivery_health","host":"h","pending":{"ok":true},'
                '"failures":{"ok":0}}',
                "pending must map names to counts",
            ),
            (
                '{"v":1,"kind":"delivery_health","host":"h","pending":{"ok":-5},'
                '"failures":{"ok":0}}',
                "pending must map names to counts",
            ),
            (
                '{"v":1,"kind":"delivery_health","host":"h","pending":{"ok":1},'
                '"failures":{"ok":1' + "0" * 400 + "}}",
                "failures must map names to counts",
            ),
            (
                '{"v":1,"kind":"outbox_trouble","host":"h","failing":true,"error":"e",'
                '"spooled":true}',
                "spooled must be a whole number",
            ),
        ],
        ids=[
            "not-json",
            "not-object",
            "version",
            "kind",
            "lacks",
            "pid-string",
            "limit-string",
            "limit-bool",
            "pending-bool",
            "pending-negative",
            "failures-huge",
            "spooled-bool",
        ],
    )
    def test_rejects_malformed_messages_with_a_reason(self, text, match):
        """A bad message raises ValueError saying what is wrong."""
        with pytest.raises(ValueError, match=match):
            decode(text)
