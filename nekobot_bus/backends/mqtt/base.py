"""What both MQTT deliveries share: the paho-mqtt client, its network thread, subscriptions and sends.

Threads and who owns them
-------------------------

paho-mqtt 2.x runs the connection on a network thread of its own
(``paho-mqtt-client-{client_id}``), started by ``start()`` and joined by
``stop()``. It connects, reconnects (forever, with a backoff from 1 s to
10 s; each loss counted ``connection_errors``, each return ``reconnects``),
keeps the connection alive and runs the callbacks, which decode each
message and offer it to the dispatcher of its direction without waiting;
no handler ever runs on it. After every connect it subscribes to what the
handlers ask for again. ``send_*`` runs in the caller's thread: with QoS 1
it waits at most ``send_timeout`` for the broker's PUBACK of every message.
``register_*`` on a running bus waits as long for the broker's SUBACK.

A send finds the connection down: it waits for it up to ``send_timeout``,
or raises at once when it has been down for longer than that:
:class:`~nekobot_bus.BusConnectionError` saying nothing was sent. A send the
broker did not confirm in time raises too; paho may still send it after a
reconnect. A message larger than the broker's ``Maximum Packet Size`` (from
its CONNACK) or ``max_message_size`` is refused with
:class:`~nekobot_bus.MessageEncodeError` before anything is sent.

Sessions: MQTT 5 only. The session lasts ``session_expiry`` seconds past a
disconnect: the broker keeps the subscriptions and queues QoS 1 messages
for the client, so a reconnect within that time misses nothing. A bus
without ``client_id`` starts clean once and resumes its own session on
every reconnect; one with ``client_id`` resumes that session at start too.

``wait_idle()`` sends a marker to a topic of its own (QoS 1) and waits for
it to come back: the broker passes one client's messages on in order, so by
then what this bus sent before and came back to it is in its dispatcher;
then it waits for the workers. It knows nothing of other processes: on the
queue delivery, what another member of the group took is that member's.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from ... import codec
from ..._urls import redact
from ...bus import Bus, as_direction, as_message
from ...dispatch import Direction
from ...errors import BusClosedError, BusConnectionError, ConfigError, UnroutedMessageError
from ...message import WILDCARD, Message
from ..remote_options import build_remote, split_options
from ..start_hold import NothingSent, StartHold
from .client import CONNECT, connect_in_background, new_client, new_properties, no_delay
from .options import DEFAULT_MQTT_URL, MqttConfig, MqttOptions, read_config
from .publish import Publisher
from .subscriptions import Subscriptions
from .topics import Topics, level

__all__ = ["MqttBase"]

logger = logging.getLogger("nekobot_bus.mqtt")


class MqttBase(Bus):
    """The connection side of an MQTT bus; :class:`~.fanout.MqttBus` and
    :class:`~.queue.MqttQueueBus` are its two deliveries.

    :param mqtt_url: ``mqtt://`` or ``mqtts://``; a user and password in it are never shown.
    :param options: the :class:`~.options.MqttOptions`, the delivery's
        options and the :class:`~nekobot_bus.DispatchOptions`, as keyword arguments.
    """

    delivery: ClassVar[str]
    delivery_options: ClassVar[type]
    extra_metrics: ClassVar[tuple[str, ...]] = (
        *("sent_in", "sent_out", "unrouted", "decode_errors"),
        *("reconnects", "connection_errors"),
    )

    def __init__(self, mqtt_url: str = DEFAULT_MQTT_URL, **options: Any) -> None:
        own, mine, rest = split_options(options, MqttOptions, self.delivery_options)
        self.mqtt = MqttOptions(mqtt_url=mqtt_url, **own)
        self._delivery_options = self.delivery_options(**mine)
        super().__init__(**rest)
        if self.dispatch != "threaded":
            raise ConfigError("dispatch 'inline' is for the local bus; the MQTT thread never runs handlers")

    def _prepare_transport(self) -> None:
        self.address = redact(self.mqtt.mqtt_url)
        self.topics = Topics(self.mqtt.topic_prefix)
        self.client_id = self.mqtt.client_id or f"nekobot-bus-{uuid.uuid4().hex[:12]}"
        self.max_message_size = self.mqtt.max_message_size
        self._client: paho.Client | None = None
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        self._stopping = threading.Event()
        self._state_changed = threading.Condition()  # guards what follows, and the markers
        self._up = False
        self._down_since: float | None = None
        self._refused: str | None = None  # why the broker refused the last CONNECT
        self._connects = 0
        #: Changes at every connect and every disconnect: a packet id is valid only within one.
        self.connection = 0
        self._closing = threading.Event()  # set as the connection closes: no PUBACK comes after
        self._publisher = Publisher(self._metrics, self.address, self.mqtt.qos, self._closing)
        self._subscriptions = Subscriptions(self._state_changed, self._metrics, self.address, self.mqtt.qos)
        #: Plain filters read for replies to requests beside the delivery's own (queue.py).
        self._reply_filters: frozenset[str] = frozenset()
        self._subscription_ids = True  # what the broker's CONNACK said; they tell reply copies apart
        self._marker_topic = self.topics.marker(uuid.uuid4().hex)
        self._markers_sent = 0
        self._markers_back = 0
        self._last_message_at: float | None = None

    def _intake_bytes(self) -> int:
        return self.mqtt.intake_bytes

    @classmethod
    def from_config(cls, config: Any) -> Bus:
        return cls.from_checked(read_config(config))

    @classmethod
    def from_checked(cls, checked: MqttConfig) -> Bus:
        """Build from a config :func:`~.options.read_config` has read and checked."""
        return build_remote(cls, checked, "mqtt_url")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} {self.address} prefix={self.topics.prefix!r}>"

    @property
    def _timeout(self) -> float:
        return self.send_timeout if self.send_timeout is not None else 30.0

    # -- hooks of the deliveries ----------------------------------------------

    @abc.abstractmethod
    def _filter(self, direction: Direction, channel_id: str) -> str:
        """The subscription of *channel_id*'s handlers (a shared one for the queue)."""

    def _connect_properties(self, properties: Properties) -> None:
        """Add the delivery's CONNECT properties."""

    @abc.abstractmethod
    def _received(self, client: paho.Client, msg: paho.MQTTMessage, direction: Direction) -> None:
        """On the network thread: hand a message over (decoded or not); never block."""

    # -- lifecycle (caller's thread) ---------------------------------------------

    def _start_transport(self) -> None:
        manual = self.delivery == "queue" and self.mqtt.qos == 1
        client = new_client(self.mqtt, self.client_id, manual_ack=manual)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = client.on_unsubscribe = self._subscriptions.on_suback
        client.on_publish = self._publisher.on_puback
        properties = new_properties(CONNECT)
        self._connect_properties(properties)
        self._client = client
        connect_in_background(client, self.mqtt, properties)
        with self._state_changed:
            self._state_changed.wait_for(
                lambda: self._up or self._refused is not None, self.mqtt.connect_timeout + self._timeout
            )
            up, refused = self._up, self._refused
        if not up:
            self._abandon_start()
            why = f"it refused the connection: {refused}" if refused else "no connection within the time"
            raise BusConnectionError(f"could not connect to the MQTT broker at {self.address}: {why}")
        try:
            # The connect subscribed without waiting; a message sent from now on must be received.
            self._confirm_subscriptions(self._timeout)
            self._hold.release(self._publish_batch)
        except BaseException:
            self._abandon_start()
            raise

    def _abandon_start(self) -> None:
        """Close what a failed start() opened, so that start() may be tried again."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        with self._state_changed:
            self._up, self._refused = False, None
            self._subscriptions.forget()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """With *drain*, let what this bus sent arrive first (for at most half the time left, so the
        workers and the disconnect keep theirs); then subscribe to nothing more."""
        half = time.monotonic() + (deadline - time.monotonic()) / 2
        if drain and self._client is not None and not self._round_trip(half):
            self._drain_failed = True
        with self._state_changed:  # a registration waiting for its SUBACK ends now (_handlers_changed)
            self._stopping.set()
            self._state_changed.notify_all()
        self._subscribe_to(set())
        with contextlib.suppress(BusConnectionError):  # the broker is away: nothing comes anyway
            self._confirm_subscriptions(max(0.1, min(1.0, deadline - time.monotonic())))
        self._hold.drop_all()
        return []

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        """Once the workers stopped (their acknowledgements are queued): disconnect, join the thread."""
        client, self._client = self._client, None
        if client is None:
            return []
        self._closing.set()  # a send still waiting for its PUBACK gives up
        client.disconnect()  # sent after what is queued before it
        thread = getattr(client, "_thread", None)
        client.loop_stop()  # joins: the thread wakes within a second even while reconnecting
        return [thread] if isinstance(thread, threading.Thread) and thread.is_alive() else []

    # -- the connection (network thread) ---------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            with self._state_changed:
                self._refused = str(reason)
                self._state_changed.notify_all()
            if not self._stopping.is_set():
                self._metrics.incr("connection_errors")
            return
        self._publisher.broker_max = int(getattr(props, "MaximumPacketSize", 0) or 0)
        self._subscription_ids = bool(getattr(props, "SubscriptionIdentifierAvailable", 1))
        if self._reply_filters and not self._subscription_ids:
            logger.warning(
                "the MQTT broker at %s has no subscription identifiers: replies to requests are not read",
                self.address,
            )
        no_delay(client)
        with self._state_changed:
            self._connects += 1
            self.connection += 1
            again = self._connects > 1
            self._up, self._down_since, self._refused = True, None, None
            self._subscriptions.forget()
            self._state_changed.notify_all()
        if again:
            self._metrics.incr("reconnects")
            logger.info(
                "reconnected to the MQTT broker at %s (session kept: %s)", self.address, flags.session_present
            )
        self._resubscribe()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with self._state_changed:
            was_up = self._up
            self._up = False
            if was_up:
                self.connection += 1  # packet ids of the old connection mean nothing any more
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._state_changed.notify_all()  # nobody waits for an answer this connection will not bring
        if was_up and not self._stopping.is_set():
            self._metrics.incr("connection_errors")
            logger.warning(
                "lost the connection to the MQTT broker at %s (%s); reconnecting", self.address, reason
            )

    def _on_message(self, client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg.topic  # paho decodes it at each read
        if topic == self._marker_topic:
            with self._state_changed:
                self._markers_back = max(self._markers_back, int(msg.payload or b"0"))
                self._state_changed.notify_all()
            if self.delivery == "queue" and msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        name = self.topics.parse(topic)
        if name is None:
            if self.delivery == "queue" and msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        self._last_message_at = time.time()
        self._received(client, msg, name.direction)

    # -- subscriptions -------------------------------------------------------------

    def _check_channel(self, channel_id: str) -> None:
        level(channel_id)  # a channel id MQTT would misread is refused before anything changes

    def _wanted(self) -> set[str]:
        wanted = {self._marker_topic, *(self._reply_filters if self._subscription_ids else ())}
        for direction in Direction:
            channels = self._registries[direction].channels()
            # The wildcard covers every channel; exact ones too would deliver twice.
            wanted |= {self._filter(direction, c) for c in ({WILDCARD} if WILDCARD in channels else channels)}
        return wanted

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        if not self.running:
            return
        self._subscribe_to(self._wanted())
        try:
            self._subscriptions.confirm(self._timeout, lambda: self._up and not self._stopping.is_set())
        except BusConnectionError:
            if self._stopping.is_set():
                raise BusClosedError(f"{self!r} stopped while its subscriptions changed") from None
            raise

    def _confirm_subscriptions(self, timeout: float) -> None:
        self._subscriptions.confirm(timeout, lambda: self._up)

    def _resubscribe(self) -> None:
        """On the network thread, after a connect: subscribe to what is wanted, without waiting."""
        if not self._stopping.is_set():
            self._subscribe_to(self._wanted())

    def _subscribe_to(self, wanted: set[str]) -> None:
        client = self._client
        if client is not None:
            self._subscriptions.change(client, wanted, lambda: self._up, identified=self._reply_filters)

    # -- sending ------------------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            level(message.channel_id)  # refused now if it never could be sent, not at start()
            codec.encode(message, max_size=self.max_message_size)
            if self._hold.try_hold(direction, message, unless=self._stopping.is_set):
                return
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(direction, [message])

    def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """Publish *messages*; with QoS 1, wait for the broker to confirm each.

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises BusConnectionError: the broker was unreachable for ``send_timeout``
            seconds (nothing was sent), or did not confirm within it.
        :raises MessageEncodeError: a message is larger than the broker or the bus takes.
        """
        way = as_direction(direction)
        batch = [as_message(m) for m in messages]
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(way, batch)

    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        topics = [self.topics.messages(direction, m.channel_id) for m in batch]
        payloads = [codec.encode(m, max_size=self.max_message_size) for m in batch]
        for topic, payload in zip(topics, payloads, strict=True):
            self._publisher.check_size(topic, payload)
        client = self._wait_up()
        try:
            unrouted = self._publisher.publish(
                client, list(zip(topics, payloads, strict=True)), self._timeout
            )
        except BusConnectionError:
            self._metrics.incr("connection_errors")
            raise
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        if unrouted:
            self._metrics.incr("unrouted", unrouted)
            self._reached_nobody(unrouted, len(batch))

    def _reached_nobody(self, unrouted: int, sent: int) -> None:
        """*unrouted* of *sent* messages matched no subscription (counted already): raise, if asked to."""
        if self.mqtt.raise_on_unrouted:
            raise UnroutedMessageError(
                f"{unrouted} of {sent} message(s) matched no subscription at the broker at {self.address}, "
                "which keeps nothing for a topic nobody subscribed to"
            )

    def _wait_up(self, *, count: bool = True, within: float | None = None) -> paho.Client:
        """The client once connected, waiting up to ``send_timeout`` for a connection that is down.

        :param count: count a failure in ``connection_errors`` (a send's, not a marker's).
        :param within: wait at most this long instead (a drain's deadline).
        :raises NothingSent: not connected in time (or down for longer than that already).
        """
        with self._state_changed:
            client = self._client
            if client is None:
                raise NothingSent(f"the MQTT broker at {self.address} is not connected; nothing was sent")
            if not self._up:
                down = time.monotonic() - (self._down_since or time.monotonic())
                if down > self._timeout:  # an outage, not a blip: do not make every caller wait it out
                    self._metrics.incr("connection_errors", int(count))
                    raise NothingSent(
                        f"the MQTT broker at {self.address} has been unreachable for {down:.1f} s; "
                        "nothing was sent"
                    )
                wait = self._timeout if within is None else min(within, self._timeout)
                if not self._state_changed.wait_for(lambda: self._up, wait):
                    self._metrics.incr("connection_errors", int(count))
                    raise NothingSent(
                        f"the MQTT broker at {self.address} unreachable for {self._timeout} s; "
                        "nothing was sent"
                    )
            return client

    # -- observing ------------------------------------------------------------------

    def _round_trip(self, deadline: float) -> bool:
        """Send a marker to this bus's own topic and wait, until *deadline*, for it to come back."""
        try:
            client = self._wait_up(count=False, within=max(0.0, deadline - time.monotonic()))
        except NothingSent:
            return False
        with self._state_changed:
            self._markers_sent += 1
            marker = self._markers_sent
        client.publish(self._marker_topic, b"%d" % marker, qos=1)
        with self._state_changed:
            return self._state_changed.wait_for(
                lambda: self._markers_back >= marker, max(0.0, deadline - time.monotonic())
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself arrived and every message it took is finished."""
        deadline = time.monotonic() + (1e9 if timeout is None else timeout)
        if self.running and not self._round_trip(deadline):
            return False
        return self._metrics.wait_idle(max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        """Whether the connection is up, to which broker, how often it reconnected, the last message's age."""
        last = self._last_message_at
        return super().health() | {
            "connected": self.running and self._up,
            "address": self.address,
            "client_id": self.client_id,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
        }
