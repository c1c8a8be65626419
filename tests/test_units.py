"""Sizes, durations and rates as they appear in flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listeners.core.units import format_size, parse_duration, parse_rate, parse_share, parse_size

MB = 1024 * 1024


class TestParseSize:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("16MB", 16 * MB),
            ("16mb", 16 * MB),
            ("16M", 16 * MB),
            ("16MiB", 16 * MB),
            ("16 MB", 16 * MB),
            ("512KB", 512 * 1024),
            ("512k", 512 * 1024),
            ("1GB", 1024 * MB),
            ("1.5GiB", 1536 * MB),
            ("0.5M", MB // 2),
            (".5M", MB // 2),
            ("1048576", MB),
            ("100B", 100),
        ],
    )
    def test_accepted_forms(self, text, expected):
        """superlance's KB/MB/GB (powers of 1024) and the K/M/G and KiB spellings agree."""
        assert expected == parse_size(text)

    @pytest.mark.parametrize("text", ["16XB", "-5MB", "0", "0MB", "", "MB", "16 M B", "1e3", "nan"])
    def test_rejected_forms_name_the_value(self, text):
        """A bad size raises ValueError quoting the value and the accepted forms."""
        with pytest.raises(ValueError, match="invalid size") as info:
            parse_size(text)
        assert repr(text) in str(info.value)

    @given(st.integers(1, 2**40), st.sampled_from(["", "K", "KB", "M", "MiB", "G", "gb"]))
    def test_integers_with_any_unit_scale_exactly(self, n, unit):
        """N<unit> is N times the unit's power of 1024."""
        power = {"": 0, "k": 1, "kb": 1, "m": 2, "mib": 2, "g": 3, "gb": 3}[unit.lower()]
        assert n * 1024**power == parse_size(f"{n}{unit}")


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30", 30.0),
            ("30s", 30.0),
            ("200ms", 0.2),
            ("5m", 300.0),
            ("1.5h", 5400.0),
            ("1d", 86400.0),
            ("0.25", 0.25),
        ],
    )
    def test_accepted_forms(self, text, expected):
        """Bare seconds, ms, s, m, h and d are accepted, decimals too."""
        assert expected == parse_duration(text)

    @pytest.mark.parametrize("text", ["5 minutes", "-1", "5w", "", "m"])
    def test_rejected_forms(self, text):
        """Anything else raises ValueError naming the accepted units."""
        with pytest.raises(ValueError, match="ms, s, m, h or d"):
            parse_duration(text)


class TestParseRate:
    def test_count_and_window(self):
        """3/5m is three events in 300 seconds."""
        assert (3, 300.0) == parse_rate("3/5m")

    @pytest.mark.parametrize("text", ["3", "/5m", "x/5m", "3/", "0/5m", "3/0", "3/5w", "-1/5m"])
    def test_rejected(self, text):
        """Malformed rates name the COUNT/WINDOW form."""
        with pytest.raises(ValueError, match=r"COUNT/WINDOW|greater than zero"):
            parse_rate(text)


class TestParseShare:
    def test_takes_a_count_or_a_share(self):
        """'3' is a count, '25%' a share; 0, 0% and 150% are refused naming the value."""
        assert (3, 0.0) == parse_share("3")
        assert (0, 0.25) == parse_share("25%")
        for bad in ("0", "0%", "150%", "x", ""):
            with pytest.raises(ValueError, match=repr(bad)):
                parse_share(bad)


class TestFormatSize:
    def test_human_units(self):
        """Bytes are shown in the largest binary unit below 1024."""
        assert ["512B", "1.5KiB", "16.0MiB", "2.0GiB"] == [
            format_size(n) for n in (512, 1536, 16 * MB, 2048 * MB)
        ]


def test_counts_statuses_and_positive_durations_share_one_parser_each():
    """The parsers every tool's count, HTTP status and timeout flags go through."""
    from listeners.core.units import parse_count, parse_positive_duration, parse_status

    assert (3, 204, 0.25) == (
        parse_count("3"),
        parse_status("204"),
        parse_positive_duration("250ms"),
    )
    for bad, parse in (("0", parse_count), ("x", parse_count), ("99", parse_status),
                       ("0s", parse_positive_duration)):  # fmt: skip
        with pytest.raises(ValueError, match="invalid"):
            parse(bad)
