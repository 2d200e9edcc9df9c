"""Fan-out on MQTT topics: every subscribed process gets each message.

Where a message can be lost, and how it shows
---------------------------------------------

With QoS 1 (the default) the broker confirms each send, and keeps QoS 1
messages for a subscriber whose connection broke, for ``session_expiry``
seconds: a reconnect within that time misses nothing. paho acknowledges a
message as soon as the bus took it, before the handlers ran, so a message
the process dies holding is gone (at most once past the broker). A burst the
workers cannot keep up with waits in memory up to ``intake_bytes``; past
that it is counted ``dropped``. A payload that is not a message is counted
``decode_errors``. With QoS 1 the broker's PUBACK says when no
subscription matched a message: the sender counts it ``unrouted``
(``raise_on_unrouted`` raises it). With QoS 0 the broker confirms nothing
and keeps nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt.client as paho

from ... import codec
from ...dispatch import Direction
from ...errors import MessageDecodeError
from .base import MqttBase
from .options import FanoutOptions

__all__ = ["MqttBus"]

logger = logging.getLogger("nekobot_bus.mqtt")


class MqttBus(MqttBase):
    """A bus whose messages travel through MQTT topics, between processes.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "mqtt"``.
    Thread-safe, as every :class:`~nekobot_bus.Bus`.
    """

    delivery = "fanout"
    delivery_options = FanoutOptions
    thread_name = "mqtt"

    def _filter(self, direction: Direction, channel_id: str) -> str:
        return self.topics.messages(direction, channel_id)

    def _received(self, client: paho.Client, msg: paho.MQTTMessage, direction: Direction) -> None:
        payload: Any = msg.payload
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", msg.topic, len(payload), exc)
            return
        self._dispatchers[direction].offer(message, None, len(payload))
