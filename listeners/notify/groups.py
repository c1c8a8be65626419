"""Removed groups: what crashmail keeps per process goes when its group leaves supervisord.

A group goes with PROCESS_GROUP_REMOVED (``supervisorctl remove``, ``update``, a task disabled)
or, when that event is not subscribed or was lost, by being absent from a reconcile's
``getAllProcessInfo``. Without this, each removed group left about 1 KB behind for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, MutableSet
from typing import Any

from listeners.core.names import group_of

__all__ = ["PRUNE_EVERY", "absent_groups", "drop_group"]

#: Seconds between two reconciles that look for groups gone unseen (memmon's safety period).
PRUNE_EVERY = 3600.0


def drop_group(group: str, *maps: MutableMapping[str, Any] | MutableSet[str]) -> int:
    """Remove the ``group:name`` keys of ``group`` from each map or set; returns how many."""
    dropped = 0
    for m in maps:
        gone = [k for k in m if group_of(k) == group]
        for key in gone:
            if isinstance(m, MutableMapping):
                del m[key]
            else:
                m.discard(key)
        dropped += len(gone)
    return dropped


def absent_groups(
    seen: Mapping[str, float], infos: Iterable[Mapping[str, Any]], asked: float
) -> list[str]:
    """Groups of ``seen`` missing from a ``getAllProcessInfo`` answer asked for at ``asked``.

    ``seen`` maps a group to when crashmail last heard of it; one heard of after the question
    may have been added since and is kept. An empty answer is a failed call (the list always
    holds crashmail itself) and removes nothing.
    """
    present = {str(i["group"]) for i in infos}
    if not present:
        return []
    return sorted(g for g, when in seen.items() if g not in present and when < asked)
