"""The process table fed by events and reconciles."""

from __future__ import annotations

from listeners.core.state import ProcessTable
from tests.fakes import make_event, state_event


def info(name: str, state: str = "RUNNING", pid: int = 10, **kw: object) -> dict[str, object]:
    group, _, proc = name.partition(":")
    return {"group": group, "name": proc, "statename": state, "pid": pid, "start": 100, **kw}


class TestProcessTable:
    def test_reconcile_fills_and_prunes(self):
        """getAllProcessInfo is the truth: new ones appear, vanished ones go."""
        t = ProcessTable()
        t.reconcile([info("g:a"), info("g:b", pid=11)])
        assert {"g:a": 10, "g:b": 11} == t.pids()
        t.reconcile([info("g:b", pid=11)])
        assert ["g:b"] == [r.full_name for r in t]

    def test_ignores_itself(self):
        """The listener's own name never enters the table."""
        t = ProcessTable(ignore={"memmon:memmon"})
        t.reconcile([info("memmon:memmon"), info("g:a")])
        assert t.apply(state_event("RUNNING", "memmon", pid=5)) is None
        assert ["g:a"] == [r.full_name for r in t]

    def test_events_track_pid_and_counters(self):
        """STARTING after a run counts a restart; EXITED expected:0 an unexpected exit."""
        t = ProcessTable()
        t.apply(state_event("STARTING", "a", "g"))
        t.apply(state_event("RUNNING", "a", "g", pid=42))
        assert {"g:a": 42} == t.pids()
        t.apply(state_event("EXITED", "a", "g", pid=42, expected=0))
        assert {} == t.pids()
        t.apply(state_event("STARTING", "a", "g"))
        t.apply(state_event("EXITED", "a", "g", pid=43, expected=1))
        t.apply(state_event("STARTING", "a", "g"))
        t.apply(state_event("FATAL", "a", "g"))
        r = t.get("g:a")
        assert r is not None
        assert (2, 1, 1, "FATAL") == (r.restarts, r.unexpected_exits, r.fatal, r.state)

    def test_group_removed_drops_its_processes(self):
        """PROCESS_GROUP_REMOVED forgets the group's processes only."""
        t = ProcessTable()
        t.reconcile([info("g:a"), info("h:b")])
        e = make_event("PROCESS_GROUP_REMOVED", "groupname:g\n")
        t.apply_group(e)  # type: ignore[arg-type]
        assert ["h:b"] == [r.full_name for r in t]


class TestPruning:
    def test_removed_keys_are_reported_for_owners_maps(self):
        """apply_group returns the removed keys; reconcile lists what it dropped."""
        table = ProcessTable()
        table.reconcile([{"group": "a", "name": "a_0"}, {"group": "b", "name": "b_0"}])
        table.reconcile([{"group": "a", "name": "a_0"}])
        assert ["b:b_0"] == table.removed
        event = make_event("PROCESS_GROUP_REMOVED", "groupname:a\n")
        assert ["a:a_0"] == table.apply_group(event)  # type: ignore[arg-type]
        assert 0 == len(table)
