"""crashmail forgets removed groups: on PROCESS_GROUP_REMOVED and at a reconcile (issue 11 #19)."""

from __future__ import annotations

from listeners.core import bus
from listeners.notify.alert import subject
from listeners.notify.groups import PRUNE_EVERY, absent_groups, drop_group
from listeners.notify.incident import REMOVED_KEEP
from listeners.notify.patterns import parse_pattern
from tests.fakes import make_event
from tests.test_crashmail import Harness
from tests.test_crashmail_incidents import restarted

PHP_FATAL = "PHP Fatal error:  Uncaught Exception: boom in /app/job.php:3\n"


def group_event(h: Harness, group: str, added: bool) -> None:
    h.serial += 1
    name = "PROCESS_GROUP_ADDED" if added else "PROCESS_GROUP_REMOVED"
    h.cm.handle(make_event(name, f"groupname:{group}\n", h.serial))


def live(h: Harness, group: str) -> None:
    """A group that leaves something in every map crashmail keeps per process."""
    group_event(h, group, added=True)
    w = f"{group}_w"
    for _ in range(3):  # a crash loop: detector track, open incident, flood's last alert
        h.send("EXITED", name=w, group=group, expected=0, pid=5)
        h.clock.now += 1
        h.send("STARTING", name=w, group=group)
        h.send("RUNNING", name=w, group=group, pid=6)
    h.send("FATAL", name=f"{group}_f", group=group)
    h.send("EXITED", name=w, group=group, expected=0, pid=6)  # the pid is dead for patterns
    h.serial += 1
    log = f"processname:{group}_l groupname:{group} pid:8 channel:stderr\n{PHP_FATAL}next\n"
    h.cm.handle(make_event("PROCESS_LOG_STDERR", log, h.serial))  # a match waits its grace
    msg = bus.Backoff("h", group, w, 3, 10.0, next_start=h.clock.now + 10)
    h.serial += 1
    h.cm.handle(
        make_event("REMOTE_COMMUNICATION", f"type:{bus.HEALTH_TYPE}\n{bus.encode(msg)}", h.serial)
    )
    h.cm._covered[f"{group}:{w}"] = "EXITED"  # what a reconcile after lost events leaves
    h.cm._watched[f"{group}:{w}"] = True


def sizes(h: Harness) -> dict[str, int]:
    cm = h.cm
    return {
        "watched": len(cm._watched),
        "covered": len(cm._covered),
        "fatal": len(cm._fatal),
        "tracks": len(cm.detector._tracks),
        "incidents": len(cm.incidents.processes()),
        "outbox loops": len(h.outbox.open_loops()),
        "flood": len(cm.flood._last),
        "streams": len(cm.logwatch._streams),
        "dead": len(cm.logwatch._dead),
        "pending": len(cm.logwatch._pending),
        "backoffs": len(cm.backoffs),
        "table": len(cm.table),
        "seen": len(cm._seen),
    }


def empty() -> dict[str, int]:
    return dict.fromkeys(
        [
            "watched",
            "covered",
            "fatal",
            "tracks",
            "incidents",
            "outbox loops",
            "flood",
            "streams",
            "dead",
            "pending",
            "backoffs",
            "table",
            "seen",
        ],
        0,
    )


def harness(tmp_path) -> Harness:
    return Harness(tmp_path, patterns=parse_pattern("php"))


def notes(h: Harness) -> list:
    """Every recorded alert of kind crash_loop or resolved that is a note, not the loop alert."""
    return [
        i.alert
        for i in h.outbox.due_incidents(10**12)
        if i.alert.kind == "resolved" or i.alert.details.get("note")
    ]


class TestGroupRemoved:
    def test_after_groups_come_and_go_every_map_is_empty(self, tmp_path):
        """20 groups crash loop, go FATAL, log errors, are held; removed, nothing is left but
        their open incidents, which wait REMOVED_KEEP for the group's return and then go."""
        h = harness(tmp_path)
        for i in range(20):
            live(h, f"g{i}")
        before = sizes(h)
        assert [] == [k for k in before if not before[k]], before
        for i in range(20):
            group_event(h, f"g{i}", added=False)
        assert {**empty(), "incidents": 20, "outbox loops": 20} == sizes(h)
        h.clock.now += REMOVED_KEEP - 1
        h.cm.on_timer()
        assert 20 == sizes(h)["incidents"]
        h.clock.now += 1
        h.cm.on_timer()
        assert empty() == sizes(h)
        assert [] == [a for a in notes(h) if a.kind == "resolved"]

    def test_other_groups_keep_theirs(self, tmp_path):
        """Removing one group leaves another's incident and holds alone."""
        h = harness(tmp_path)
        live(h, "a")
        live(h, "b")
        group_event(h, "a", added=False)
        assert 1 == len(h.cm.backoffs)
        assert (h.cm.incidents.get("a:a_w").removed, h.cm.incidents.get("b:b_w").removed) == (
            h.clock.now,
            None,
        )

    def test_an_open_incident_stays_open_with_one_note_and_no_resolved(self, tmp_path):
        """Removed while looping (supervisor-tasks disable): one crash_loop note that says
        removed, the incident stays open, and nothing resolves it; a second REMOVED is quiet."""
        h = harness(tmp_path)
        live(h, "a")
        group_event(h, "a", added=False)
        group_event(h, "a", added=False)
        (note,) = notes(h)
        assert ("crash_loop", "removed") == (note.kind, note.details["note"])
        assert "removed from supervisord while crash looping" in note.message
        assert "continue this incident" in note.message
        assert "was removed from supervisord while crash looping" in subject(note)
        assert "stable" not in subject(note)
        h.clock.now += 86400
        h.cm.on_timer()
        assert ["a:a_w"] == h.cm.incidents.processes()
        assert [note] == notes(h)  # no reminder while it is gone, no resolved

    def test_stopped_then_removed_says_it_once(self, tmp_path):
        """supervisor-tasks disable stops the worker, then removes its group: the stop's note
        is the only one."""
        h = harness(tmp_path)
        live(h, "a")
        h.clock.now += 11  # past health's hold of it: this stop is tasks' (a hold has no note)
        h.send("STOPPED", name="a_w", group="a", from_state="BACKOFF")
        group_event(h, "a", added=False)
        (note,) = notes(h)
        assert "stopped" == note.details["note"]
        assert "a:a_w" in h.cm.incidents

    def test_a_group_added_again_continues_its_incident_until_really_stable(self, tmp_path):
        """Enabled again, still broken: its exits are counted in the same incident, no crash
        alert; once it runs for the stable window, one resolved alert counts every exit."""
        h = harness(tmp_path)
        live(h, "a")
        key = h.cm.incidents.get("a:a_w").key
        exits = h.cm.incidents.get("a:a_w").exits
        group_event(h, "a", added=False)
        h.clock.now += 600
        group_event(h, "a", added=True)
        for _ in range(2):
            h.send("STARTING", name="a_w", group="a", from_state="STOPPED")
            h.send("RUNNING", name="a_w", group="a", pid=10)
            h.clock.now += 1
            h.send("EXITED", name="a_w", group="a", expected=0, pid=10)
        inc = h.cm.incidents.get("a:a_w")
        assert (inc.key, inc.exits, inc.removed) == (key, exits + 2, None)
        assert [] == [a for a in notes(h) if a.kind == "resolved"]
        assert [] == [i for i in h.outbox.due_incidents(10**12) if i.alert.time > h.clock.now - 5]
        h.send("STARTING", name="a_w", group="a", from_state="EXITED")
        h.send("RUNNING", name="a_w", group="a", pid=11)
        h.clock.now += h.cm.incidents.stable
        h.cm.on_timer()
        (resolved,) = [a for a in notes(h) if a.kind == "resolved"]
        assert f"saw {exits + 2} exits" in resolved.message
        assert "a:a_w" not in h.cm.incidents


class TestReconcilePrunes:
    def test_a_group_absent_at_the_hourly_reconcile_is_forgotten(self, tmp_path):
        """No REMOVED event (not subscribed, or lost): the reconcile after PRUNE_EVERY prunes."""
        h = harness(tmp_path)
        live(h, "gone")
        live(h, "kept")
        h.clock.now += PRUNE_EVERY
        h.cm.on_timer()
        (ask,) = h.reconciles
        ask([{"group": "kept", "name": "kept_w", "statename": "RUNNING", "pid": 6}])
        h.cm.on_timer()
        assert 1 == len(h.cm.backoffs)
        assert (
            h.cm.incidents.get("gone:gone_w").removed,
            h.cm.incidents.get("kept:kept_w").removed,
        ) == (
            h.clock.now,
            None,
        )
        assert "gone" not in h.cm._seen
        assert {"kept"} == {r.group for r in h.cm.table}

    def test_a_group_heard_of_after_the_question_is_kept(self, tmp_path):
        """A group added while the snapshot was on its way is not pruned by it."""
        h = harness(tmp_path)
        h.clock.now += PRUNE_EVERY
        h.cm.on_timer()
        (ask,) = h.reconciles
        h.clock.now += 1
        live(h, "new")
        ask([{"group": "other", "name": "other", "statename": "RUNNING"}])
        h.cm.on_timer()
        assert ["new:new_w"] == h.cm.incidents.processes()

    def test_a_failed_reconcile_prunes_nothing(self, tmp_path):
        """An empty answer (the RPC failed) is not 'every group is gone'."""
        h = harness(tmp_path)
        live(h, "a")
        h.clock.now += PRUNE_EVERY
        h.cm.on_timer()
        h.reconciles[0]([])
        h.cm.on_timer()
        assert ["a:a_w"] == h.cm.incidents.processes()

    def test_the_start_snapshot_marks_incidents_of_groups_gone_meanwhile(self, tmp_path):
        """An incident kept in the outbox for a group removed while crashmail was down is noted
        once as removed and dropped after REMOVED_KEEP, never resolved."""
        h = harness(tmp_path)
        live(h, "a")
        cm = restarted(h)
        h.reconciles.clear()
        cm.start()
        (ask,) = h.reconciles
        ask([{"group": "crashmail", "name": "crashmail", "statename": "RUNNING"}])
        cm.on_timer()
        assert ["a:a_w"] == cm.incidents.processes()
        assert ["removed"] == [a.details["note"] for a in notes(h)]
        h.clock.now += REMOVED_KEEP
        cm.on_timer()
        assert ([], {}) == (cm.incidents.processes(), h.outbox.open_loops())
        assert ["removed"] == [a.details.get("note") for a in notes(h)]


class TestHelpers:
    def test_drop_group_takes_only_that_groups_keys(self):
        """web's keys go from a dict and a set; webx's stay."""
        d, s = {"web:a": 1, "webx:a": 2}, {"web:b", "webx:b"}
        assert (2, {"webx:a": 2}, {"webx:b"}) == (drop_group("web", d, s), d, s)

    def test_absent_groups(self):
        """Missing and heard of before the question: absent; an empty answer: none."""
        seen = {"a": 1.0, "b": 1.0, "c": 5.0}
        infos = [{"group": "b", "name": "b"}]
        assert (["a"], []) == (absent_groups(seen, infos, 4.0), absent_groups(seen, [], 4.0))
