"""Sending on MQTT with the broker's word: confirmed (PUBACK) or not, and whether anybody subscribed.

An MQTT 5 broker answers a QoS 1 PUBLISH that matched no subscription with
the PUBACK reason code ``0x10`` (no matching subscribers): the message is
gone. :class:`Publisher` learns that per message, so the bus counts it
``unrouted`` (and, with ``raise_on_unrouted``, raises it to the sender). It
also knows the broker's ``Maximum Packet Size`` (from its CONNACK) and
refuses a larger message before sending it: a broker disconnects a client
that sends one.

No lock of ours is held across a paho call: paho calls ``on_publish`` with
its own outgoing-message lock held, which ``publish()`` takes too, so a lock
held across both would deadlock. Each PUBACK marks or unmarks its packet id
instead, before paho marks the send published: the sender reads the mark
of its own packet ids after it saw them published.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as paho

from ...errors import BusConnectionError, MessageEncodeError
from ...metrics import Metrics

__all__ = ["Publisher"]

#: What a PUBLISH costs past its topic and payload, at most (fixed header, id, properties).
_PUBLISH_OVERHEAD = 64
#: The reason code of a PUBACK for a message no subscription matched (MQTT 5).
_NO_MATCHING_SUBSCRIBERS = 0x10
#: Seconds between two looks at whether the connection is closing, while a PUBACK is late
#: (paho's wait cannot be woken otherwise; once closed, the network thread reads no PUBACK).
_CLOSE_CHECK = 0.1


class Publisher:
    """Publishes batches and waits for their PUBACKs. Thread-safe.

    :param qos: 1: wait for the broker's PUBACK of each; 0: for the write only.
    :param closing: set when the bus closes its connection: a send still waiting gives up then.
    """

    def __init__(self, metrics: Metrics, address: str, qos: int, closing: threading.Event) -> None:
        self._metrics = metrics
        self._address = address
        self._qos = qos
        self._closing = closing
        self._lock = threading.Lock()  # guards the set only, never held across a paho call
        self._unrouted: set[int] = set()  # packet ids whose latest PUBACK said: no subscription
        #: The broker's Maximum Packet Size, from its last CONNACK; 0: it named none.
        self.broker_max = 0

    def check_size(self, topic: str, payload: bytes) -> None:
        """:raises MessageEncodeError: the broker would refuse the packet (and drop the connection)."""
        limit = self.broker_max
        if limit and len(topic) + len(payload) + _PUBLISH_OVERHEAD > limit:
            raise MessageEncodeError(
                f"a {len(payload)}-byte payload on {topic} is more than the broker at {self._address} "
                f"takes (its Maximum Packet Size is {limit} bytes); nothing was sent"
            )

    def on_puback(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        """paho's ``on_publish``, on the network thread (it runs before the send is marked published)."""
        with self._lock:
            if getattr(reason, "value", 0) == _NO_MATCHING_SUBSCRIBERS:
                self._unrouted.add(mid)
            else:  # a packet id is used again: its newest PUBACK is the one that counts
                self._unrouted.discard(mid)

    def publish(self, client: paho.Client, pairs: list[tuple[str, bytes]], timeout: float) -> int:
        """Publish each (topic, payload) and wait up to *timeout* for the broker to confirm all.

        :returns: how many of them reached no subscription.
        :raises BusConnectionError: not all confirmed in time, or before the bus stopped
            (paho may still send the others once reconnected).
        """
        deadline = time.monotonic() + timeout
        infos = [client.publish(topic, payload, qos=self._qos) for topic, payload in pairs]
        confirmed = 0
        try:
            for info in infos:
                while not info.is_published() and not self._closing.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    info.wait_for_publish(min(left, _CLOSE_CHECK))
                if not info.is_published():
                    break
                confirmed += 1
        except (RuntimeError, ValueError) as exc:  # paho could not queue it (it may keep a QoS 1 one)
            raise BusConnectionError(
                f"the MQTT client did not send to {self._address} ({exc}); "
                "it may still send a QoS 1 message once reconnected"
            ) from None
        if confirmed < len(pairs):
            within = (
                "before the bus closed its connection" if self._closing.is_set() else f"within {timeout} s"
            )
            raise BusConnectionError(
                f"the MQTT broker at {self._address} confirmed {confirmed} of {len(pairs)} message(s) "
                f"{within}; the client may still send the others once reconnected"
            )
        if self._qos == 0:
            return 0
        mids = {info.mid for info in infos}
        with self._lock:
            unrouted = len(self._unrouted & mids)
            self._unrouted -= mids
        return unrouted
