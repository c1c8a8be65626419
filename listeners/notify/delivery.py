"""Delivery health on the bus: crashmail says how many alerts wait and how many attempts failed.

A missing sendmail or a dead webhook used to be visible only in crashmail's own log. The counts
come from the outbox (cheap SQLite reads on the event thread) and go out as a bus message
(``supervisor.sendRemoteCommEvent``, sent off the loop by ``publish``), which the exporter turns
into ``supervisor_listeners_alerts_pending{sink}`` and
``supervisor_listeners_alert_delivery_failures_total{sink}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from listeners.core import bus
from listeners.notify.outbox import Outbox

__all__ = ["HEALTH_EVERY", "HEALTH_RESEND", "DeliveryHealthAnnouncer"]

#: Seconds between two looks at the outbox.
HEALTH_EVERY = 5.0
#: Seconds after which unchanged counts are sent again (an exporter started later learns them).
HEALTH_RESEND = 60.0


class DeliveryHealthAnnouncer:
    """Call ``tick()`` from the listener's timer; it publishes when counts change or go stale."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[str],
        *,
        host: str,
        publish: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self.outbox = outbox
        self.sinks = list(sinks)
        self.host = host
        self.publish = publish
        self.clock = clock
        self._next = 0.0
        self._sent_at = 0.0
        self._last: dict[str, tuple[int, int]] | None = None

    def tick(self) -> bool:
        """True when a message was published."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + HEALTH_EVERY
        health = self.outbox.delivery_health(self.sinks)
        if health is None:  # the outbox is locked or broken: its own trouble is announced
            return False
        if health == self._last and now - self._sent_at < HEALTH_RESEND:
            return False
        self._last, self._sent_at = health, now
        message = bus.DeliveryHealth(
            host=self.host,
            pending={s: p for s, (p, _) in health.items()},
            failures={s: f for s, (_, f) in health.items()},
        )
        self.publish(bus.encode(message))
        return True
