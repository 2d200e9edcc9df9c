"""Many processes on NATS: fan-out on core NATS subjects, behind the synchronous ``Bus`` contract.

Threads and who owns them
-------------------------

nats-py is asyncio-only, so the bus runs one event loop on a thread of its
own (``nekobot-bus-nats-loop``), started by ``start()`` and stopped by
``stop()``. The loop owns the NATS connection: it connects, reconnects
(forever, each time counted ``reconnects``), answers the server's PINGs and
runs the subscriptions' callbacks, which decode each message and offer it
to the dispatcher of its direction without waiting; no handler ever runs
on the loop. ``send_*`` runs in the caller's thread and hands the publish
to the loop, waiting at most ``send_timeout`` for it; ``register_*`` on a
running bus waits, as long, for the server to confirm the subscription.

Where a message can be lost, and how it shows
---------------------------------------------

Core NATS is at most once, like Redis pub/sub. A send returns once the
server has the message (a ``PUBLISH`` and a ``PING``/``PONG`` round trip),
or raises :class:`~nekobot_bus.BusConnectionError`: at once when the
connection has been down for longer than ``send_timeout``, else after
waiting that long for it (nothing was sent), or when the round trip did not
complete in time (then the client may still deliver it once it
reconnects). NATS does not tell a publisher whether anybody listened, so
there is no ``unrouted`` count. A burst the workers cannot keep up with
waits in memory up to ``intake_bytes``; past that, and when the client's
own pending limits for a subscription are hit (a slow consumer), the
message is counted ``dropped``. A payload that is not a message is counted
``decode_errors``; a message this bus sent to itself and lost with the
connection, ``lost``, once a marker published after the reconnect came
back without it (``backends/read_back.py``). Messages published while a
subscriber was disconnected are not seen by it.

With ``group``, the subscriptions join a NATS queue group of that name: the
server gives each message to one member of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from ... import codec
from ..._urls import redact
from ...bus import Bus, as_direction, as_message
from ...dispatch import Direction
from ...errors import BusClosedError, BusConnectionError, ConfigError, MessageDecodeError
from ...message import WILDCARD, Message
from ..read_back import NextMarker, ReadBack
from ..start_hold import NothingSent, StartHold
from .loop import LoopThread
from .options import DEFAULT_NATS_URL, NatsConfig, NatsOptions, read_config
from .subjects import Subjects, token

__all__ = ["NatsBus"]

logger = logging.getLogger("nekobot_bus.nats")

#: The client's own limit on what one subscription may hold undelivered (our callback never waits).
_PENDING_MESSAGES = 65536


class NatsBus(Bus):
    """A bus whose messages travel through NATS subjects, between processes.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "nats"``.
    Thread-safe, as every :class:`~nekobot_bus.Bus`.

    :param nats_url: one ``nats://`` or ``tls://`` URL, or a list of them;
        a user, password or token in them is never shown.
    :param options: the :class:`~.options.NatsOptions` and the
        :class:`~nekobot_bus.DispatchOptions`, as keyword arguments.
    """

    delivery = "fanout"
    thread_name = "nats"
    extra_metrics: ClassVar[tuple[str, ...]] = (
        "sent_in",
        "sent_out",
        "decode_errors",
        "reconnects",
        "connection_errors",
        "lost",
    )

    def __init__(self, nats_url: str | list[str] = DEFAULT_NATS_URL, **options: Any) -> None:
        own = {field.name for field in attrs.fields(NatsOptions)} - {"nats_url"}
        self.nats = NatsOptions(nats_url=nats_url, **{k: v for k, v in options.items() if k in own})
        super().__init__(**{k: v for k, v in options.items() if k not in own})
        if self.dispatch != "threaded":
            raise ConfigError("dispatch 'inline' is for the local bus; the NATS loop never runs handlers")

    def _prepare_transport(self) -> None:
        self.servers = self.nats.servers
        self.address = ",".join(redact(url) for url in self.servers)
        self.subjects = Subjects(self.nats.subject_prefix)
        self.group = self.nats.group
        self.max_message_size = self.nats.max_message_size
        self._loop = LoopThread("nekobot-bus-nats-loop")
        self._client: Client | None = None
        self._subscriptions: dict[str, Subscription] = {}  # by subject; the loop's alone
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        self._stopping = threading.Event()
        self._down_since: float | None = None  # monotonic; set while disconnected
        self._up: asyncio.Event | None = None  # the loop's view of the same
        # Messages this bus published to a subject it listens to, not yet read back.
        self._read_back = ReadBack(self._metrics)
        self._marker_subject = ""  # the inbox markers come back on; set by each connect
        self._marker_due = False
        self._last_message_at: float | None = None
        self._outage_told = False

    def _intake_bytes(self) -> int:
        return self.nats.intake_bytes

    @classmethod
    def from_config(cls, config: Any) -> Bus:
        return cls.from_checked(read_config(config))

    @classmethod
    def from_checked(cls, checked: NatsConfig) -> NatsBus:
        """Build from a config :func:`~.options.read_config` has read and checked."""
        if checked.queue is not None:
            raise ConfigError(
                f"bus.delivery 'queue' is not what {cls.__name__} delivers ('fanout'); "
                "create_bus() picks the class"
            )
        options = attrs.asdict(checked.options)
        return cls(options.pop("nats_url"), **options, **attrs.asdict(checked.dispatch))

    def __repr__(self) -> str:
        return f"<NatsBus {self._state} {self.address} prefix={self.subjects.prefix!r}>"

    @property
    def _timeout(self) -> float:
        return self.send_timeout if self.send_timeout is not None else 30.0

    @property
    def _flush_timeout(self) -> Any:  # nats-py annotates it int, and takes a float
        return self._timeout

    # -- lifecycle (caller's thread) ----------------------------------------

    def _start_transport(self) -> None:
        self._loop.start()
        try:
            self._loop.call(self._connect(), self.nats.connect_timeout * len(self.servers) + self._timeout)
            self._loop.call(self._apply_subscriptions(), self._timeout)
        except BaseException as exc:
            self._abandon_start()
            if isinstance(exc, (TimeoutError, OSError, nats.errors.Error)):
                raise BusConnectionError(f"could not connect to NATS at {self.address}: {exc}") from None
            raise
        try:
            self._hold.release(self._publish_batch)
        except BaseException:
            self._abandon_start()
            raise

    def _abandon_start(self) -> None:
        """Close what a failed start() opened, so that start() may be tried again."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):  # the loop stops below whatever close() did
                self._loop.call(client.close(), 2.0)
        self._loop.stop(2.0)
        self._client = None
        self._subscriptions.clear()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain:
            self._read_back.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        client = self._client
        if client is not None:
            try:  # with the server down, close() cancels the reconnecting and returns
                self._loop.call(client.close(), max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # the loop stops below whatever close() did
                logger.warning("the NATS connection to %s did not close cleanly: %r", self.address, exc)
        alive = self._loop.stop(max(0.1, deadline - time.monotonic()))
        self._hold.drop_all()
        self._read_back.stopped()
        return [alive] if alive is not None else []

    # -- the connection (loop thread) ----------------------------------------

    async def _connect(self) -> None:
        self._up = asyncio.Event()
        client = Client()
        # nats-py annotates its seconds as int, and takes floats: hence Any.
        settings: dict[str, Any] = {
            "connect_timeout": self.nats.connect_timeout,
            "reconnect_time_wait": 0.5,
            "ping_interval": self.nats.health_check_interval,
        }
        await client.connect(
            servers=self.servers,
            name=f"nekobot-bus-{os.getpid()}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **settings,
        )
        self._client = client
        # Markers (read_back.py) come back on an inbox of this connection's own; nats-py
        # subscribes it again after a reconnect, before it sends what it held meanwhile.
        self._marker_subject = client.new_inbox()
        await client.subscribe(self._marker_subject, cb=self._on_marker)
        self._up.set()

    async def _on_disconnected(self) -> None:
        if self._up is not None:
            self._up.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not self._stopping.is_set():
            self._metrics.incr("connection_errors")
            if not self._outage_told:
                self._outage_told = True
                logger.warning(
                    "lost the connection to NATS at %s; reconnecting until it answers", self.address
                )

    async def _on_reconnected(self) -> None:
        self._down_since = None
        self._outage_told = False
        self._metrics.incr("reconnects")
        if self._up is not None:
            self._up.set()
        logger.info("reconnected to NATS at %s", self._connected_to())
        # What this bus sent to itself and the broken connection took along is told by a
        # marker: once it is back, what was published before it and has not come is lost.
        await self._send_marker()

    async def _send_marker(self) -> None:
        client = self._client
        if client is None or not self._marker_subject:
            return
        marker = self._read_back.marker()
        with contextlib.suppress(nats.errors.Error, OSError):  # then the next reconnect sends one
            await client.publish(self._marker_subject, b"%d" % marker)

    async def _on_marker(self, msg: Msg) -> None:
        follow = self._read_back.marker_arrived(int(msg.data))
        if follow is NextMarker.NOW:
            await self._send_marker()
        elif follow is NextMarker.AFTER_PUBLISH:
            self._marker_due = True  # sent by the sender whose publish returns next

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            name = self.subjects.parse(exc.subject)
            direction = name.direction if name is not None else Direction.INBOUND
            self._metrics.accepted(f"messages_{direction.suffix}")
            self._metrics.finished(f"dropped_{direction.suffix}")
            logger.warning("NATS dropped a message on %s for this slow subscriber", exc.subject)
            return
        if not self._stopping.is_set():
            self._metrics.incr("connection_errors")
            logger.debug("NATS client error: %s", exc)

    def _connected_to(self) -> str:
        client = self._client
        url = client.connected_url if client is not None else None
        return redact(url.geturl()) if url is not None else self.address

    # -- subscriptions ---------------------------------------------------------

    def _wanted(self) -> dict[str, Direction]:
        wanted: dict[str, Direction] = {}
        for direction in Direction:
            channels = self._registries[direction].channels()
            if WILDCARD in channels:  # the wildcard covers every channel; exact ones too would deliver twice
                wanted[self.subjects.messages(direction, WILDCARD)] = direction
            else:
                wanted.update({self.subjects.messages(direction, c): direction for c in channels})
        return wanted

    def _check_channel(self, channel_id: str) -> None:
        token(channel_id)  # a channel id NATS would misread is refused before anything changes

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        if not self.running or self._loop.on_loop:
            return
        try:
            self._loop.call(self._apply_subscriptions(), self._timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusConnectionError(
                f"NATS at {self.address} did not confirm the subscription change within "
                f"{self._timeout} s ({exc}); the client applies it once it is connected again"
            ) from None

    async def _apply_subscriptions(self) -> None:
        client = self._client
        assert client is not None
        wanted = self._wanted()
        for subject in set(self._subscriptions) - set(wanted):
            await self._subscriptions.pop(subject).unsubscribe()
        for subject in set(wanted) - set(self._subscriptions):
            self._subscriptions[subject] = await client.subscribe(
                subject,
                queue=self.group or "",
                cb=self._on_message,
                pending_msgs_limit=_PENDING_MESSAGES,
                pending_bytes_limit=self.nats.intake_bytes,
            )
        await client.flush(self._flush_timeout)  # the server has them: a message sent now is received
        subjects = set(wanted)
        self._read_back.unsubscribed(lambda d, s: _covered(s, d, subjects, self.subjects))

    async def _on_message(self, msg: Msg) -> None:
        name = self.subjects.parse(msg.subject)
        if name is None:
            return
        payload = msg.data
        self._last_message_at = time.time()
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", msg.subject, len(payload), exc)
            return
        self._dispatchers[name.direction].offer(message, None, len(payload))
        self._read_back.arrived(message.id)

    # -- sending ----------------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            # Refused now if it never could be sent, not when start() sends what was held.
            token(message.channel_id)
            codec.encode(message, max_size=self.max_message_size)
            if self._hold.try_hold(direction, message, unless=self._stopping.is_set):
                return
        self.send_many(direction, (message,))

    def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """Publish *messages* and wait for the server to have them, in one round trip.

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises BusConnectionError: NATS was unreachable for ``send_timeout``
            seconds (nothing was sent), or did not confirm within it (the
            client may still send them once reconnected).
        """
        way = as_direction(direction)
        batch = [as_message(m) for m in messages]
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(way, batch)

    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        if not batch:
            return
        subjects = [self.subjects.messages(direction, token(m.channel_id)) for m in batch]
        payloads = [codec.encode(m, max_size=self.max_message_size) for m in batch]
        local = self._registries[direction].channels()
        mine = {
            m.id: (direction, subject)
            for m, subject in zip(batch, subjects, strict=True)
            if m.channel_id in local or WILDCARD in local
        }
        self._read_back.expect(mine)  # before publishing: the loop may read it back before the call returns
        try:
            self._loop.call(self._publish(list(zip(subjects, payloads, strict=True))), self._timeout)
        except Unreachable as exc:
            self._read_back.forget(mine)
            self._metrics.incr("connection_errors")
            raise NothingSent(f"NATS at {self.address} {exc}") from None
        except (TimeoutError, OSError, RuntimeError, nats.errors.Error) as exc:
            self._read_back.forget(mine)
            self._metrics.incr("connection_errors")
            raise BusConnectionError(
                f"NATS at {self.address} did not confirm {len(batch)} message(s) within {self._timeout} s "
                f"({exc or type(exc).__name__}); the client may still send them once reconnected"
            ) from None
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        self._read_back.published(mine)
        if self._marker_due:  # a marker found one of these in flight (read_back.py)
            self._marker_due = False
            with contextlib.suppress(TimeoutError, OSError, RuntimeError, nats.errors.Error):
                self._loop.call(self._send_marker(), self._timeout)

    async def _wait_up(self) -> Client:
        """The client, once connected; wait at most ``send_timeout`` for a connection that is down.

        :raises Unreachable: nothing was sent.
        """
        client, up = self._client, self._up
        if client is None or up is None:
            raise Unreachable("is not connected; nothing was sent")
        if not up.is_set():
            down = time.monotonic() - (self._down_since or time.monotonic())
            if down > self._timeout:  # an outage, not a blip: do not make every caller wait it out
                raise Unreachable(f"has been unreachable for {down:.1f} s; nothing was sent")
            try:
                await asyncio.wait_for(up.wait(), self._timeout)
            except asyncio.TimeoutError:
                raise Unreachable(f"unreachable for {self._timeout} s; nothing was sent") from None
        return client

    async def _publish(self, pairs: list[tuple[str, bytes]]) -> None:
        client = await self._wait_up()
        for subject, payload in pairs:
            await client.publish(subject, payload)
        # nats-py's flush() returns at once, without a round trip, when its read loop has
        # ended (a connection that just broke, not yet marked so): that is no confirmation.
        reading = getattr(client, "_reading_task", None)
        if not client.is_connected or reading is None or reading.done():
            raise ConnectionError("the connection broke before the server confirmed")
        await client.flush(self._flush_timeout)
        if not client.is_connected:
            raise ConnectionError("the connection broke before the server confirmed")

    # -- observing ----------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself has arrived and every taken message is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_back.wait(timeout):
            return False
        return self._metrics.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        """Whether the connection is up, to which server, how often it reconnected, the last message's age."""
        client = self._client
        connected = self.running and client is not None and client.is_connected
        last = self._last_message_at
        return super().health() | {
            "connected": connected,
            "server": self._connected_to() if connected else None,
            "address": self.address,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
        }


class Unreachable(Exception):
    """Raised on the loop when no connection is there to publish on: nothing was sent."""


def _covered(subject: str, direction: Direction, subscribed: set[str], subjects: Subjects) -> bool:
    return subject in subscribed or subjects.messages(direction, WILDCARD) in subscribed
