"""listeners.core.names: the one spelling of group:name."""

from __future__ import annotations

import re
from pathlib import Path

from listeners.core.names import full_name, group_of, info_name, split_name

ROOT = Path(__file__).parents[1]


def test_full_name_keeps_a_group_named_like_its_process():
    """web:web stays web:web (supervisord's RPC wants both halves)."""
    assert "web:web" == full_name("web", "web")


def test_info_name_of_a_process_info_entry():
    assert "php_mail:php_mail_03" == info_name({"group": "php_mail", "name": "php_mail_03"})


def test_split_name_round_trips_and_a_bare_name_is_its_own_group():
    assert ("g", "a:b") == split_name(full_name("g", "a:b"))
    assert ("web", "web") == split_name("web")


def test_group_of_a_key_and_of_a_bare_name():
    assert "php_mail" == group_of("php_mail:php_mail_03")
    assert "web" == group_of("web")


def test_no_module_builds_the_key_from_a_process_info_by_hand():
    """A getProcessInfo entry becomes group:name through info_name only (one spelling)."""
    by_hand = re.compile(r"""\{\w+\[["']group["']\]\}:\{\w+\[["']name["']\]\}""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "listeners").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert [] == offenders
