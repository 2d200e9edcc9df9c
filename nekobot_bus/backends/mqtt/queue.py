"""Load-balanced delivery on an MQTT 5 shared subscription: one member of a group handles each message.

Every member of group ``g`` subscribes to ``$share/g/{prefix}/inbound/{channel_id}``
(``+`` for ``"*"``), and the broker gives each message to one of them.

With QoS 1 the bus acknowledges a message (its PUBACK) only after all its
handlers returned: a failed handler is retried with backoff until
``max_deliveries``; then the message is published to
``{prefix}/dead/{direction}/{channel_id}`` with the reason in its user
properties, and acknowledged. ``Receive Maximum`` holds the broker to as
many unacknowledged messages as the workers have room for.

What the broker does with a message a member received and did not
acknowledge is the broker's, and MQTT has no timeout for it: the message
stays in that member's session. Mosquitto 2.0 sends it again when the same
client id connects again within ``session_expiry``, and to nobody else; if
the member never comes back, it is gone with the session. So give each
member a ``client_id`` of its own that survives a restart (``agent-1``), and
a ``session_expiry`` longer than a restart takes. A message published while
no member of the group is subscribed is not kept by MQTT at all (the
broker's PUBACK says so: it is counted ``unrouted``, and with
``raise_on_unrouted`` the send raises): start the consumers first. Dead letters are published, not stored:
subscribe something to ``{prefix}/dead/#`` to keep them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ClassVar

import attrs
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from ... import codec
from ...dispatch import MESSAGE_OVERHEAD, Direction
from ...errors import BusConnectionError, MessageDecodeError
from ...message import Message
from ...settle import DeadLetter, Outcome, Release, RetryAt, RetryPolicy, RetrySettler, Settler
from .base import MqttBase
from .client import PUBLISH, new_properties
from .options import QueueOptions
from .subscriptions import is_reply_copy

__all__ = ["MqttQueueBus"]

logger = logging.getLogger("nekobot_bus.mqtt")


@attrs.define(eq=False)
class Delivery:
    """One received message until it is settled: its packet id on the connection it came on."""

    mid: int
    qos: int
    connection: int
    direction: Direction
    deliveries: int
    payload: bytes
    topic: str


class MqttQueueBus(RetrySettler[Delivery], MqttBase):
    """A bus whose messages go to one member of a group through an MQTT 5 shared subscription.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "mqtt"`` with
    ``bus.delivery: "queue"``. Thread-safe, as every :class:`~nekobot_bus.Bus`.
    """

    delivery = "queue"
    delivery_options = QueueOptions
    thread_name = "mqtt-queue"
    extra_metrics: ClassVar[tuple[str, ...]] = (
        *MqttBase.extra_metrics,
        *(
            f"{key}_{suffix}"
            for key in ("acked", "ack_failed", "redelivered", "dead_lettered")
            for suffix in ("in", "out")
        ),
    )

    def _prepare_transport(self) -> None:
        super()._prepare_transport()
        self.queue: QueueOptions = self._delivery_options
        self.group = self.queue.group
        self._policy = RetryPolicy(self.queue.max_deliveries, self.queue.retry_backoff)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} group={self.group!r}>"

    def _settler(self, direction: Direction) -> Settler[Delivery]:
        return self

    def _filter(self, direction: Direction, channel_id: str) -> str:
        return f"$share/{self.group}/{self.topics.messages(direction, channel_id)}"

    def _connect_properties(self, properties: Properties) -> None:
        # No more unacknowledged messages than the workers have room for, nor than the intake
        # holds at the largest size: then the intake never overflows, and nothing is dropped.
        fits = self.mqtt.intake_bytes // (self.max_message_size + MESSAGE_OVERHEAD)
        properties.ReceiveMaximum = max(1, min(65535, self.queue_size * self.workers, fits))

    def _listen_for_replies(self, channel_id: str) -> None:
        """A plain subscription of the channel's outbound topic, beside the group's shared one
        (which would take other processes' messages); its copies are told apart by their
        subscription identifier and go to the requests alone, acknowledged at once."""
        if not self._subscription_ids:
            raise BusConnectionError(
                f"the MQTT broker at {self.address} has no subscription identifiers, which a request "
                "on the queue delivery needs to tell its reply from the group's copy"
            )
        self._reply_filters |= {self.topics.messages(Direction.OUTBOUND, channel_id)}
        self._handlers_changed(Direction.OUTBOUND, frozenset())  # subscribed at start() when not running

    def _received(self, client: paho.Client, msg: paho.MQTTMessage, direction: Direction) -> None:
        payload = bytes(msg.payload)
        if self._reply_filters and is_reply_copy(msg):  # a reply read beside the group, for a request
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            if self._requests.waiting:
                with contextlib.suppress(MessageDecodeError):  # the group's member counts it
                    self._requests.offer(codec.decode(payload, max_size=self.max_message_size))
            return
        deliveries = 2 if msg.dup else 1  # MQTT tells only whether it was sent before
        delivery = Delivery(msg.mid, msg.qos, self.connection, direction, deliveries, payload, msg.topic)
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", msg.topic, len(payload), exc)
            self._settle(delivery, DeadLetter(f"undecodable: {exc}"))
            return
        self._dispatchers[direction].offer(message, delivery, len(payload))

    # -- the Settler protocol (worker threads; paho's calls are thread-safe) -----------

    def carry_out(self, message: Message, ticket: Delivery, outcome: Outcome) -> None:
        self._settle(ticket, outcome)

    def _settle(self, ticket: Delivery, outcome: Outcome) -> None:
        """Acknowledge; or dead-letter and acknowledge; or, released, acknowledge unless stopping.

        MQTT cannot give a message back to the group: one that found no
        handler here (unregistered in flight) is acknowledged, counted
        ``no_handler`` already, so it does not hold one of the broker's
        ``Receive Maximum`` slots for ever; one released by a stop stays in
        the session, for this client id to get again.
        """
        suffix = ticket.direction.suffix
        client = self._client
        if isinstance(outcome, DeadLetter) and client is not None:
            properties = new_properties(PUBLISH)
            properties.UserProperty = [
                ("nekobot-reason", outcome.reason.replace("\n", " ")),
                ("nekobot-deliveries", str(ticket.deliveries)),
                ("nekobot-topic", ticket.topic),
            ]
            name = self.topics.parse(ticket.topic)
            dead = self.topics.dead(ticket.direction, name.channel_id if name else "unknown")
            info = client.publish(dead, ticket.payload, qos=self.mqtt.qos, properties=properties)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._metrics.incr(f"ack_failed_{suffix}")
                logger.warning("could not publish a dead letter to %s: %s", dead, paho.error_string(info.rc))
                return  # not acknowledged: the broker sends it again with the session
            self._metrics.incr(f"dead_lettered_{suffix}")
            logger.warning("message on %s dead-lettered: %s", ticket.topic, outcome.reason)
        elif (isinstance(outcome, Release) and self._stopping.is_set()) or isinstance(outcome, RetryAt):
            return
        if ticket.qos == 0:
            return
        with self._state_changed:
            current = client is not None and ticket.connection == self.connection and self._up
        if not current:
            # Its packet id belongs to a connection that is gone: the broker sends the
            # message again on the resumed session, and it is handled again.
            self._metrics.incr(f"ack_failed_{suffix}")
            return
        assert client is not None
        rc = client.ack(ticket.mid, ticket.qos)
        if isinstance(outcome, Release):
            return  # counted no_handler by the dispatcher
        self._metrics.incr(f"acked_{suffix}" if rc == paho.MQTT_ERR_SUCCESS else f"ack_failed_{suffix}")

    def health(self) -> dict[str, Any]:
        """As the fan-out's, and the group."""
        return super().health() | {"group": self.group}
