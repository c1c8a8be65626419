"""The one spelling of a process's name: ``group:name``, as supervisord's XML-RPC takes it.

Every listener keys its maps by this form; building it in one place keeps them agreeing (a
process whose group and name are equal is still ``web:web``, never ``web``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["full_name", "group_of", "info_name", "split_name"]


def full_name(group: str, name: str) -> str:
    """``group:name`` of one process."""
    return f"{group}:{name}"


def info_name(info: Mapping[str, Any]) -> str:
    """``group:name`` of a getProcessInfo / getAllProcessInfo entry."""
    return full_name(str(info["group"]), str(info["name"]))


def split_name(full: str) -> tuple[str, str]:
    """``("group", "name")`` of ``group:name``; a bare ``name`` is its own group."""
    group, sep, name = full.partition(":")
    return (group, name) if sep else (full, full)


def group_of(full: str) -> str:
    """The group of ``group:name`` (a bare ``name`` is its own group)."""
    return split_name(full)[0]
