"""The filters an MQTT connection holds, and the broker's answers the bus waits for.

:class:`Subscriptions` shares the bus's condition (which also guards whether
the connection is up), so a wait for SUBACKs ends as soon as the connection
breaks. The condition is held from each (UN)SUBSCRIBE to the registration
of its packet id, so that its answer cannot come before it is awaited:
paho's calls here only queue a packet, and its callbacks do not run under
them. A filter the broker refuses (a failure reason code in its SUBACK) is
not held, so the next change or connect asks again, and the refusal is
raised to whoever waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ...errors import BusConnectionError
from ...metrics import Metrics
from .client import SUBSCRIBE, new_properties

__all__ = ["REPLY_SUBSCRIPTION", "Subscriptions", "is_reply_copy"]

#: The subscription identifier of the filters that read replies to requests beside a shared subscription.
REPLY_SUBSCRIPTION = 1


def is_reply_copy(msg: paho.MQTTMessage) -> bool:
    """Whether the broker delivered *msg* for a filter subscribed with :data:`REPLY_SUBSCRIPTION`."""
    properties = getattr(msg, "properties", None)
    return REPLY_SUBSCRIPTION in (getattr(properties, "SubscriptionIdentifier", None) or ())


logger = logging.getLogger("nekobot_bus.mqtt")


class Subscriptions:
    """What one bus's connection subscribes to. Thread-safe, under *changed*."""

    def __init__(self, changed: threading.Condition, metrics: Metrics, address: str, qos: int) -> None:
        self._changed = changed
        self._metrics = metrics
        self._address = address
        self._qos = qos
        self._held: set[str] = set()  # filters subscribed on the connection now
        self._awaited: set[int] = set()  # packet ids of (UN)SUBSCRIBEs whose answer is awaited
        self._topics_of: dict[int, list[str]] = {}  # SUBSCRIBEs unanswered: their filters
        self._refusals: dict[int, str] = {}  # SUBSCRIBEs the broker refused: why

    def forget(self) -> None:
        """A new connection (the caller holds the condition): what the old one held is gone,
        and so are the answers it still owed."""
        self._held, self._awaited, self._topics_of = set(), set(), {}

    def change(
        self,
        client: paho.Client,
        wanted: set[str],
        up: Callable[[], bool],
        *,
        identified: frozenset[str] = frozenset(),
    ) -> None:
        """Ask the broker to make the held filters *wanted*, if the connection is *up*; do not wait.

        :param identified: filters subscribed with :data:`REPLY_SUBSCRIPTION`
            as their subscription identifier, which the broker puts on each
            message it delivers for them: a message that matches one of these
            and a shared subscription of the same topic comes twice, told apart so.
        """
        with self._changed:
            if not up():
                return
            add, drop = sorted(wanted - self._held), sorted(self._held - wanted)
            self._held = set(wanted)
            for topics, identifier in (
                ([t for t in add if t not in identified], None),
                ([t for t in add if t in identified], REPLY_SUBSCRIPTION),
            ):
                if topics:
                    self._subscribe(client, topics, identifier)
            if drop:
                mid = client.unsubscribe(drop)[1]
                if mid is not None:
                    self._awaited.add(mid)

    def _subscribe(self, client: paho.Client, topics: list[str], identifier: int | None) -> None:
        properties = None
        if identifier is not None:
            properties = new_properties(SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
        options = SubscribeOptions(qos=self._qos)
        mid = client.subscribe([(topic, options) for topic in topics], properties=properties)[1]
        if mid is not None:
            self._awaited.add(mid)
            self._topics_of[mid] = topics

    def on_suback(self, _client: paho.Client, _userdata: Any, mid: int, codes: Any, _props: Any) -> None:
        """paho's ``on_subscribe`` and ``on_unsubscribe``, on the network thread."""
        with self._changed:
            topics = self._topics_of.pop(mid, [])
            refused = {
                topic: str(code) for topic, code in zip(topics, codes or (), strict=False) if code.is_failure
            }
            if refused:
                self._held -= set(refused)
                self._refusals[mid] = "; ".join(f"{topic}: {why}" for topic, why in refused.items())
            self._awaited.discard(mid)
            self._changed.notify_all()
        if refused:
            self._metrics.incr("connection_errors")
            logger.warning("the MQTT broker at %s refused subscriptions: %s", self._address, refused)

    def confirm(self, timeout: float, up: Callable[[], bool]) -> None:
        """Wait for the broker's answers to every (UN)SUBSCRIBE sent.

        :raises BusConnectionError: no answer in time (or the connection broke), or the
            broker refused one (saying why).
        """
        with self._changed:
            answered = self._changed.wait_for(lambda: not self._awaited or not up(), timeout)
            refusals, self._refusals = self._refusals, {}
            connected = up()
        if refusals:
            raise BusConnectionError(
                f"the MQTT broker at {self._address} refused subscriptions: {'; '.join(refusals.values())}"
            )
        if not (answered and connected):
            raise BusConnectionError(
                f"the MQTT broker at {self._address} did not confirm the subscription change within "
                f"{timeout} s; the bus subscribes again once it is connected"
            )
