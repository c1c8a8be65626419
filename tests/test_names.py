"""listeners.core.names: the one spelling of group:name."""

from __future__ import annotations

from listeners.core.names import full_name, info_name, split_name


def test_full_name_keeps_a_group_named_like_its_process():
    """web:web stays web:web (supervisord's RPC wants both halves)."""
    assert "web:web" == full_name("web", "web")


def test_info_name_of_a_process_info_entry():
    assert "php_mail:php_mail_03" == info_name({"group": "php_mail", "name": "php_mail_03"})


def test_split_name_round_trips_and_a_bare_name_is_its_own_group():
    assert ("g", "a:b") == split_name(full_name("g", "a:b"))
    assert ("web", "web") == split_name("web")
