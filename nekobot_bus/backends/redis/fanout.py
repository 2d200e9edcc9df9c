"""Many processes on one Redis: fan-out over pub/sub, read by a supervised thread.

Threads and who owns them
-------------------------

``send_*`` runs in the caller's thread: encode, then ``PUBLISH`` on a pooled
connection. A connect failure is retried with capped backoff until
``send_timeout`` and then raises :class:`~nekobot_bus.BusConnectionError`; a
failure after the command was written is not retried (Redis may have
published it) and raises at once. ``PUBLISH`` returning 0 means no process
was subscribed: the message is counted ``unrouted`` (or raises
:class:`~nekobot_bus.UnroutedMessageError` with ``raise_on_unrouted``).

One reader thread (``nekobot-bus-redis-reader``) owns the subscriber
connection; no other thread touches it. It is a bare redis-py connection
speaking RESP2, not a ``PubSub`` object: the reader keeps its own
subscription state anyway, and reading replies directly costs a tenth of
``PubSub.get_message`` per message. It reads with a bounded timeout,
subscribes to exactly the channels that have handlers (a pattern only for
``"*"``, and then no exact channel of that direction, so nothing arrives
twice), decodes each payload and hands it to the dispatcher of its
direction; it never runs a handler. When the link is idle it sends PING and
reconnects if no PONG comes back within ``health_check_timeout``, so a
half-open or paused connection is noticed. On any error it closes the
connection, waits a capped, jittered, growing delay and connects again, for
as long as the bus runs; each reconnect is counted.

Where a message can be lost, and how it shows
---------------------------------------------

Pub/sub is at most once. A message published while no subscriber is
connected is ``unrouted`` at the sender. A message that finds the receiving
dispatcher's queues full is counted ``dropped`` by the receiver (the reader
never blocks, so Redis never cuts it for a full output buffer). A payload
that is not a message is counted ``decode_errors``. A message this bus sent
to itself that was lost with a broken connection is counted ``lost`` when
the reader reconnects. A message another process published into a
connection that then broke is not seen by anybody: use the queue delivery
where that matters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from ... import codec
from ..._options import Section
from ..._threads import join_all
from ...bus import Bus
from ...dispatch import Direction
from ...errors import (
    BusClosedError,
    BusConnectionError,
    BusFullError,
    MessageDecodeError,
    UnroutedMessageError,
)
from ...message import WILDCARD, Message
from .base import RedisBase
from .client import (
    DEFAULT_PREFIX,
    connection_config,
)
from .compat import read_reply
from .queue.bus import RedisStreamBus

__all__ = ["DEFAULT_PREFIX", "RedisBus"]

logger = logging.getLogger("nekobot_bus.redis")

# How long one read of the subscriber connection waits; it bounds how late the
# reader notices a stop, a registration or a silent connection.
_READ_TIMEOUT = 0.25


class RedisBus(RedisBase):
    """A bus whose messages travel through Redis pub/sub, between processes.

    Thread-safe, as every :class:`~nekobot_bus.Bus`. Registration changes
    take effect on the reader within one read cycle; on a running bus,
    ``register_*`` waits (up to ``send_timeout``) until the subscription is
    confirmed, so a message sent right after it is received.

    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://``
        for TLS; the password is never shown in ``repr()``, logs or errors.
    :param prefix: channel names are ``{prefix}inbound:{channel_id}`` and
        ``{prefix}outbound:{channel_id}``.
    :param health_check_interval: seconds of silence after which the reader
        sends PING.
    :param health_check_timeout: seconds a PING may wait for its PONG before
        the connection is declared dead.
    :param raise_on_unrouted: make a send that reached no subscriber raise.
    :param redis_options: passed to :class:`redis.Redis` (``ssl_*``,
        ``socket_*`` ...).
    """

    type_name = "redis"
    extra_metrics = (
        "sent_in",
        "sent_out",
        "unrouted",
        "decode_errors",
        "reconnects",
        "connection_errors",
        "lost",
    )

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        health_check_interval: float = 1.0,
        health_check_timeout: float = 2.0,
        raise_on_unrouted: bool = False,
        max_message_size: int = codec.DEFAULT_MAX_SIZE,
        redis_options: Mapping[str, Any] | None = None,
        **bus_options: Any,
    ) -> None:
        # The reader reads its bare connection, not redis-py's PubSub layer
        # (a tenth of its cost per message).
        super().__init__(
            url,
            prefix=prefix,
            max_message_size=max_message_size,
            redis_options=redis_options,
            reader_name="Redis reader",
            **bus_options,
        )
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.raise_on_unrouted = raise_on_unrouted
        self._channel_names = {d: f"{prefix}{d.value}:" for d in Direction}
        self._wake_channel = f"{prefix}wake:{uuid.uuid4().hex}"
        self._reader: threading.Thread | None = None  # one per start(), owned by the bus
        # Subscription state: _wanted and _generation are written by registering
        # threads, _confirmed_generation by the reader; all guarded by _subs.
        self._subs = threading.Condition()
        self._wanted: frozenset[str] = frozenset({self._wake_channel})
        self._generation = 0
        self._confirmed_generation = -1
        # Messages this bus published to a channel it listens to, not yet read back.
        self._awaiting: set[str] = set()
        self._awaiting_lock = threading.Condition()
        self._pending: list[tuple[Direction, Message]] = []
        self._publishing = False  # True once start() has published what waited
        self._lifecycle_pending = threading.Lock()
        self._last_message_at: float | None = None

    def __repr__(self) -> str:
        return f"<RedisBus {self._state} {self.address} prefix={self.prefix!r}>"

    # -- config -----------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Bus:
        bus, gateway = Section("bus", config.get("bus")), Section("gateway", config.get("gateway"))
        go_redis = Section("redis", config.get("redis"))
        options = cls.dispatch_options(bus, gateway)
        delivery = bus.text("delivery", "fanout", choices=("fanout", "queue"))
        if delivery == "queue":
            return RedisStreamBus.from_sections(bus, go_redis, options)
        url, prefix, redis_options = connection_config(bus, go_redis)
        bus_only: dict[str, Any] = {
            "health_check_interval": bus.seconds("health_check_interval", 1.0) or 1.0,
            "health_check_timeout": bus.seconds("health_check_timeout", 2.0) or 2.0,
            "raise_on_unrouted": bus.flag("raise_on_unrouted", False),
            "max_message_size": bus.integer("max_message_size", codec.DEFAULT_MAX_SIZE, minimum=1024),
        }
        bus.check_no_unknown_keys(also_known=("type",))
        go_redis.check_no_unknown_keys()
        return cls(url, prefix=prefix, redis_options=redis_options, **bus_only, **options)

    # -- names ------------------------------------------------------------

    def channel_name(self, direction: Direction, channel_id: str) -> str:
        """The Redis channel of *channel_id* in *direction*, e.g. ``nekobot:bus:inbound:telegram``."""
        return self._channel_names[direction] + channel_id

    def _wanted_for(self, direction: Direction, channels: frozenset[str]) -> set[str]:
        if WILDCARD in channels:
            # The pattern covers every channel; exact ones too would deliver twice.
            return {self._channel_names[direction] + "*"}
        return {self._channel_names[direction] + c for c in channels}

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        wanted = {self._wake_channel}
        for d in Direction:
            wanted |= self._wanted_for(d, channels if d is direction else self._registries[d].channels())
        with self._subs:
            self._wanted = frozenset(wanted)
            self._generation += 1
            generation = self._generation
        if self.running and threading.current_thread() is not self._reader:
            self._wake_reader()
            self._wait_confirmed(generation, self.send_timeout)

    def _wait_confirmed(self, generation: int, timeout: float | None) -> bool:
        with self._subs:
            return self._subs.wait_for(lambda: self._confirmed_generation >= generation, timeout)

    # -- lifecycle --------------------------------------------------------

    def _start_transport(self) -> None:
        reader = threading.Thread(
            target=self._link.run,
            args=(self._read, self._count_lost),
            name="nekobot-bus-redis-reader",
            daemon=True,
        )
        self._reader = reader
        reader.start()
        with self._subs:
            generation = self._generation
        timeout = self.send_timeout if self.send_timeout is not None else 30.0
        if not self._wait_confirmed(generation, timeout):
            self._stopping.set()
            self._link.interrupt()
            reader.join(timeout)
            self._stopping.clear()  # start() may be tried again
            raise BusConnectionError(f"could not subscribe on Redis at {self.address} within {timeout} s")
        with self._lifecycle_pending:
            pending, self._pending = self._pending, []
            for direction in Direction:
                batch = [m for d, m in pending if d is direction]
                if batch:
                    self._publish_batch(direction, batch)
            self._publishing = True

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain and self._reader is not None and self._reader.is_alive():
            self._wait_read_back(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        self._link.interrupt()
        alive = join_all([self._reader] if self._reader is not None else [], deadline)
        self._client.close()
        self._link.close()
        return alive

    def _wake_reader(self) -> None:
        # Best effort: the reader's read timeout bounds the delay anyway.
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._wake_channel, b"")

    # -- sending ----------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._publishing:
            with self._lifecycle_pending:
                if not self._publishing and not self._stopping.is_set():
                    self._hold_until_started(direction, message)
                    return
        self.send_many(direction, (message,))

    def _hold_until_started(self, direction: Direction, message: Message) -> None:
        # Published by start() once subscribed, so the bus's own handlers see
        # them, as on the local bus.
        if len(self._pending) >= self.queue_size:
            self._metrics.incr("send_timeouts")
            raise BusFullError(
                f"{self.queue_size} messages already wait for start(); {message.id!r} was not sent"
            )
        self._pending.append((direction, message))

    def send_many(self, direction: Direction, messages: Iterable[Message]) -> None:
        """Publish *messages* in one round trip (a pipeline of ``PUBLISH``).

        :raises BusConnectionError: Redis was unreachable for ``send_timeout``
            seconds, or the connection broke after the batch was written (then
            some messages may have been published).
        """
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(direction, list(messages))

    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        if not batch:
            return
        channels = [self.channel_name(direction, m.channel_id) for m in batch]
        payloads = [codec.encode(m, max_size=self.max_message_size) for m in batch]
        # Noted before publishing: our own reader may read it back before
        # PUBLISH even returns.
        local = self._registries[direction].channels()
        mine = [m.id for m in batch if m.channel_id in local or WILDCARD in local]
        if mine:
            with self._awaiting_lock:
                self._awaiting.update(mine)
        try:
            counts = self._publish(channels, payloads)
        except BusConnectionError:
            self._forget(mine)
            raise
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        unrouted = [m for m, receivers in zip(batch, counts, strict=True) if not receivers]
        if unrouted:
            self._forget([m.id for m in unrouted])
            self._metrics.incr("unrouted", len(unrouted))
            if self.raise_on_unrouted:
                raise UnroutedMessageError(f"{len(unrouted)} of {len(batch)} messages reached no subscriber")

    def _forget(self, ids: list[str]) -> None:
        with self._awaiting_lock:
            for message_id in ids:
                self._awaiting.discard(message_id)
            if not self._awaiting:
                self._awaiting_lock.notify_all()

    def _publish(self, channels: list[str], payloads: list[bytes]) -> list[int]:
        commands = [("PUBLISH", ch, body) for ch, body in zip(channels, payloads, strict=True)]
        replies = self._runner.run(commands, f"publishing {len(commands)} message(s)")
        for reply in replies:
            if isinstance(reply, Exception):
                raise BusConnectionError(f"Redis at {self.address} refused PUBLISH: {reply}")
        return [int(reply) for reply in replies]

    # -- reading ----------------------------------------------------------

    def _read(self, conn: Any) -> None:
        """The reader's loop on one connection (see :class:`ReaderLink` for the rest)."""
        subscribed: set[str] = set()
        pending = {"subscribe": 0}
        generation = self._sync_subscriptions(conn, subscribed, pending)
        ping_sent_at: float | None = None
        last_heard = time.monotonic()
        while not self._stopping.is_set():
            # An unlocked read: a change missed here is seen on the next pass,
            # which the wake message makes immediate.
            if self._generation != generation:
                generation = self._sync_subscriptions(conn, subscribed, pending)
            try:
                # One blocking read: a reply split by the timeout is kept
                # by the parser and completed by the next read.
                response = read_reply(conn, _READ_TIMEOUT)
            except redis.TimeoutError:
                now = time.monotonic()
                if ping_sent_at is not None and now - ping_sent_at > self.health_check_timeout:
                    raise ConnectionError(f"no PONG within {self.health_check_timeout} s") from None
                if ping_sent_at is None and now - last_heard > self.health_check_interval:
                    conn.send_command("PING")
                    ping_sent_at = now
                continue
            last_heard = time.monotonic()
            ping_sent_at = None
            self._on_response(response, pending, generation)

    def _sync_subscriptions(self, conn: Any, subscribed: set[str], pending: dict[str, int]) -> int:
        with self._subs:
            wanted, generation = self._wanted, self._generation
        add = wanted - subscribed
        remove = subscribed - wanted
        for command, names in (
            ("PSUBSCRIBE", {n for n in add if n.endswith("*")}),
            ("SUBSCRIBE", {n for n in add if not n.endswith("*")}),
        ):
            if names:
                conn.send_command(command, *sorted(names))
                pending["subscribe"] += len(names)
        for command, names in (
            ("PUNSUBSCRIBE", {n for n in remove if n.endswith("*")}),
            ("UNSUBSCRIBE", {n for n in remove if not n.endswith("*")}),
        ):
            if names:
                conn.send_command(command, *sorted(names))
        subscribed.clear()
        subscribed.update(wanted)
        if not pending["subscribe"]:
            self._confirm(generation)
        return generation

    def _confirm(self, generation: int) -> None:
        with self._subs:
            if generation > self._confirmed_generation:
                self._confirmed_generation = generation
                self._subs.notify_all()

    def _on_response(self, response: list[Any], pending: dict[str, int], generation: int) -> None:
        # RESP2 subscriber replies: [b"message", channel, data],
        # [b"pmessage", pattern, channel, data], [b"subscribe", name, count],
        # [b"unsubscribe", name, count] and [b"pong", b""].
        kind = response[0]
        if kind in (b"message", b"pmessage"):
            channel = response[-2].decode("utf-8", "replace")
            if channel == self._wake_channel:
                return
            self._last_message_at = time.time()
            self._receive(channel, response[-1])
        elif kind in (b"subscribe", b"psubscribe"):
            pending["subscribe"] -= 1
            if pending["subscribe"] <= 0:
                pending["subscribe"] = 0
                self._confirm(generation)

    def _receive(self, channel: str, payload: bytes) -> None:
        if channel.startswith(self._channel_names[Direction.INBOUND]):
            direction = Direction.INBOUND
        elif channel.startswith(self._channel_names[Direction.OUTBOUND]):
            direction = Direction.OUTBOUND
        else:
            return
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", channel, len(payload), exc)
            return
        self._dispatchers[direction].offer(message)
        # Unlocked test first: a sender notes its id before PUBLISH, so an id
        # of ours is always visible here, and others' messages take no lock.
        if message.id in self._awaiting:
            self._forget([message.id])

    def _count_lost(self) -> None:
        with self._awaiting_lock:
            lost = len(self._awaiting)
            self._awaiting.clear()
            self._awaiting_lock.notify_all()
        if lost:
            self._metrics.incr("lost", lost)
            logger.warning("%d message(s) this bus sent to itself were lost with the connection", lost)

    # -- observing --------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself has arrived and every taken message is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_read_back(timeout):
            return False
        return self._metrics.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _wait_read_back(self, timeout: float | None) -> bool:
        """Wait until the reader has read back every message this bus sent to itself."""
        with self._awaiting_lock:
            return self._awaiting_lock.wait_for(lambda: not self._awaiting, timeout)

    def health(self) -> dict[str, Any]:
        """Liveness of the reader: connected and subscribed, since when, last message age."""
        since = self._link.connected_since
        last = self._last_message_at
        with self._subs:
            subscribed = self._confirmed_generation == self._generation
        connected = since is not None and self.running
        return {
            "connected": connected,
            "subscribed": connected and subscribed,
            "connected_since": since,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
            "address": self.address,
            "pid": os.getpid(),
        }
