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

__all__ = ["Subscriptions"]

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

    def change(self, client: paho.Client, wanted: set[str], up: Callable[[], bool]) -> None:
        """Ask the broker to make the held filters *wanted*, if the connection is *up*; do not wait."""
        with self._changed:
            if not up():
                return
            add, drop = sorted(wanted - self._held), sorted(self._held - wanted)
            self._held = set(wanted)
            if add:
                mid = client.subscribe([(topic, SubscribeOptions(qos=self._qos)) for topic in add])[1]
                if mid is not None:
                    self._awaited.add(mid)
                    self._topics_of[mid] = add
            if drop:
                mid = client.unsubscribe(drop)[1]
                if mid is not None:
                    self._awaited.add(mid)

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
