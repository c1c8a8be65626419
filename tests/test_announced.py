"""Alerts for what other listeners announce on the bus (notify/announced.py)."""

from __future__ import annotations

from listeners.core import bus
from listeners.notify.announced import announced_alert


class TestAnnounced:
    def test_an_action_from_the_status_page_becomes_an_alert_naming_the_user(self):
        """'restarted from the status page by op' reaches crashmail as an action alert."""
        msg = bus.ActionPerformed(host="h", group="g", name="w", action="restart", user="op")
        made = announced_alert(msg)
        assert made is not None
        assert ("action", "g", "w") == (made.kind, made.group, made.name)
        assert "restart from the status page by op" == made.fields["message"]

    def test_health_grace_is_not_alert_worthy_but_a_restart_is(self):
        """A hung process in its grace gives no alert; one health restarted does."""
        grace = bus.ProcessHung("h", "g", "w", 5, "probe", "HTTP 500", "grace")
        acted = bus.ProcessHung("h", "g", "w", 5, "probe", "HTTP 500", "restart")
        assert announced_alert(grace) is None
        made = announced_alert(acted)
        assert made is not None
        assert "hung" == made.kind

    def test_memory_limits_are_not_alerts(self):
        """memmon's limits announcement is for the exporter only."""
        assert announced_alert(bus.MemoryLimits(host="h", limits={"g:w": 1})) is None

    def test_memmon_giving_up_becomes_an_alert_with_the_command_to_run(self):
        """restarts_exhausted: how many restarts in how long, the sizes in MiB, and what to do."""
        msg = bus.RestartsExhausted("h", "php", "php_3", 5, 3600.0, 20 << 20, 16 << 20)
        made = announced_alert(msg)
        assert made is not None
        assert ("restarts_exhausted", "php", "php_3") == (made.kind, made.group, made.name)
        assert (
            "memmon restarted it 5 times in 1 hour and stopped restarting it (20.0 MiB, limit"
            " 16.0 MiB). Restart it by hand after fixing the leak: supervisorctl restart"
            " php:php_3"
        ) == made.fields["message"]

    def test_a_hung_alert_says_what_health_did_and_what_is_left_to_do(self):
        """Each action has its words: restarted; alert-only (the command to run); given up;
        held by the mass guard (look at what the group shares)."""
        texts = {}
        for action in ("restart", "alert", "exhausted", "guarded"):
            msg = bus.ProcessHung(
                "h", "queue", "queue_1", 41, "heartbeat", "no heartbeat for 3 s", action
            )
            made = announced_alert(msg)
            assert made is not None
            texts[action] = made.fields["message"]
        assert texts["restart"].startswith(
            "queue:queue_1 (pid 41) stopped sending heartbeats: no heartbeat for 3 s."
            " supervisor-health restarted it."
        )
        assert texts["alert"].endswith(
            "left running (the check is alert-only). Look at it,"
            " then: supervisorctl restart queue:queue_1."
        )
        assert "supervisorctl restart queue:queue_1" in texts["exhausted"]
        assert "something they share" in texts["guarded"]
        probe = bus.ProcessHung("h", "web", "web", 7, "probe", "HTTP 500", "restart")
        assert (
            "web:web (pid 7) failed its health check: HTTP 500."
            in (
                announced_alert(probe).fields["message"]  # type: ignore[union-attr]
            )
        )
