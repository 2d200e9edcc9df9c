"""Many processes on one Redis: fan-out over pub/sub, read by a supervised thread.

Threads and who owns them
-------------------------

``send_*`` runs in the caller's thread: encode, then ``PUBLISH`` on a pooled
connection. A connect failure is retried with capped backoff until
``send_timeout`` and then raises :class:`~nekobot_bus.BusConnectionError`; a
failure after the command was written is not retried (Redis may have
published it) and raises at once. ``PUBLISH`` returning 0 means no process
was subscribed: the message is counted ``unrouted`` (or raises
:class:`~nekobot_bus.UnroutedMessageError` with ``raise_on_unrouted``). On
a Redis Cluster ``PUBLISH`` counts only the subscribers of the node it ran
on, so nothing is counted ``unrouted`` there.

One reader thread (``nekobot-bus-redis-reader``) owns the subscriber
connection; no other thread touches it. It is a bare redis-py connection
speaking RESP2, not a ``PubSub`` object: the reader keeps its own
subscription state anyway, and reading replies directly costs a tenth of
``PubSub.get_message`` per message. It reads with a bounded timeout,
subscribes to exactly the channels that have handlers (a pattern only for
``"*"``, and then no exact channel of that direction, so nothing arrives
twice), decodes each payload and offers it to the dispatcher of its
direction; it never runs a handler and never waits for a worker. When the
link is idle it sends PING and reconnects if no PONG comes back within
``health_check_timeout``, so a half-open or paused connection is noticed.
On any error it closes the connection, waits a capped, jittered, growing
delay and connects again, for as long as the bus runs; each reconnect is
counted.

Where a message can be lost, and how it shows
---------------------------------------------

Pub/sub is at most once. A message published while no subscriber is
connected is ``unrouted`` at the sender. A burst the workers cannot keep up
with waits in the intake, up to ``intake_bytes``; past that the receiver
counts it ``dropped``. The reader never waits for a worker, so Redis cuts
its connection (``client-output-buffer-limit pubsub``) only when the reader
itself cannot keep up, as with publishers of large payloads faster than it
decodes them: what Redis had buffered is then lost, and the reconnect
counted (``nekobot-bus bench --payload-size 100000`` shows it). A payload that is not a message is counted
``decode_errors``. A message this bus sent to itself that was lost with a
broken connection is counted ``lost`` when the reader reconnects; one whose
handlers were unregistered before it arrived is counted ``no_handler``. A
message another process published into a connection that then broke is not
seen by anybody: use the queue delivery where that matters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ... import codec
from ..._threads import join_all
from ...dispatch import Direction
from ...errors import (
    BusConnectionError,
    ConfigError,
    MessageDecodeError,
    UnroutedMessageError,
)
from ...message import WILDCARD, Message
from ..read_back import ReadBack
from ..start_hold import StartHold
from .base import RedisBase
from .group import GroupClaims
from .options import FanoutOptions
from .subscriber import Subscriptions, covers, read_subscribed

__all__ = ["RedisBus"]

logger = logging.getLogger("nekobot_bus.redis")


class RedisBus(RedisBase):
    """A bus whose messages travel through Redis pub/sub, between processes.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "redis"`` (the
    default ``delivery: "fanout"``). Thread-safe, as every
    :class:`~nekobot_bus.Bus`. On a running bus, ``register_*`` and
    ``unregister_*`` return once Redis confirmed the subscription change, so
    a message sent right after is received (or not); if Redis does not
    confirm within ``send_timeout`` they raise
    :class:`~nekobot_bus.BusConnectionError`, and the reader subscribes as
    soon as it is connected again.

    Keyword arguments: see :class:`~nekobot_bus.backends.redis.RedisBase`,
    :class:`~.options.FanoutOptions` and the ``README``'s configuration reference.
    """

    delivery = "fanout"
    delivery_options = FanoutOptions
    reader_name = "Redis reader"
    thread_name = "redis"
    extra_metrics = (
        "sent_in",
        "sent_out",
        "unrouted",
        "decode_errors",
        "reconnects",
        "connection_errors",
        "lost",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options: FanoutOptions = self._delivery_options
        self.health_check_interval = options.health_check_interval
        self.raise_on_unrouted = options.raise_on_unrouted
        if self.raise_on_unrouted and not self.server.counts_receivers:
            raise ConfigError(
                f"bus.raise_on_unrouted cannot work on {self.server.address}: PUBLISH there counts only "
                "the subscribers of one node, so nobody can tell a message nobody received"
            )
        self.group = options.group
        self._wake_channel = self.keys.wake(uuid.uuid4().hex)
        self._reader: threading.Thread | None = None  # one per start(), owned by the bus
        self._subs = Subscriptions(frozenset({self._wake_channel}))
        self._read_back = ReadBack(self._metrics)
        self._link_subscribed = False  # this connection's subscriptions were confirmed
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        self._last_message_at: float | None = None

    def _intake_bytes(self) -> int:
        options: FanoutOptions = self._delivery_options
        return options.intake_bytes

    def _prepare_transport(self) -> None:
        super()._prepare_transport()
        options: FanoutOptions = self._delivery_options
        group, window = options.group, options.claim_window
        self._claims = (
            {}
            if group is None
            else {d: GroupClaims(self._runner, self.keys, d, group=group, window=window) for d in Direction}
        )

    def _gate(self, direction: Direction) -> GroupClaims | None:
        return self._claims.get(direction)

    # -- names ------------------------------------------------------------

    def channel_name(self, direction: Direction, channel_id: str) -> str:
        """The Redis channel of *channel_id* in *direction*, e.g. ``nekobot:bus:inbound:telegram``."""
        return self.keys.messages(direction, channel_id)

    def _wanted_for(self, direction: Direction, channels: frozenset[str]) -> set[str]:
        if WILDCARD in channels:
            # The pattern covers every channel; exact ones too would deliver twice.
            return {self.keys.every_channel(direction)}
        return {self.keys.messages(direction, c) for c in channels}

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        wanted: set[str] = set()
        for d in Direction:
            wanted |= self._wanted_for(d, channels if d is direction else self._registries[d].channels())
        generation = self._subs.want(wanted)
        if self.running and threading.current_thread() is not self._reader:
            self._wake_reader()
            timeout = self.send_timeout if self.send_timeout is not None else 30.0
            if not self._subs.wait(generation, timeout):
                raise BusConnectionError(
                    f"Redis at {self.address} did not confirm the subscription change within {timeout} s; "
                    "the reader applies it once it is connected again"
                )

    # -- lifecycle --------------------------------------------------------

    def _start_transport(self) -> None:
        # Fail at once, saying why, when Redis is not there or refuses us (a password, a database).
        self._runner.run([("PING",)], "connecting")
        # Named at start, in the process that runs it: a bus built before a fork has no member yet.
        member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        for claims in self._claims.values():
            claims.member = member
        reader = threading.Thread(
            target=self._link.run,
            args=(self._read, self._disconnected),
            name="nekobot-bus-redis-reader",
            daemon=True,
        )
        self._reader = reader
        self._link.starting = True
        reader.start()
        wanted, _ = self._subs.current()
        generation = self._subs.want(set(wanted))  # a new generation: this reader's own confirmation
        timeout = self.send_timeout if self.send_timeout is not None else 30.0
        subscribed = self._subs.wait(generation, timeout)
        self._link.starting = False
        if not subscribed:
            why = self._link.last_error
            self._abandon_start(reader)
            raise BusConnectionError(
                f"could not subscribe on Redis at {self.address} within {timeout} s"
                + (f": {why}" if why else "")
            )
        try:  # unrouted ones are counted, not raised: start() is not their sender
            self._hold.release(lambda direction, batch: self._publish_batch(direction, batch, raising=False))
        except BaseException:
            self._abandon_start(reader)
            raise

    def _abandon_start(self, reader: threading.Thread) -> None:
        """Stop the reader of a start() that failed, so that start() may be tried again."""
        self._stopping.set()
        self._link.interrupt()
        # Bounded: a connect attempt, then the read timeout or the reconnect wait sees _stopping.
        reader.join(self.connection.socket_connect_timeout + self.connection.socket_timeout + 1.0)
        if reader.is_alive():
            raise BusConnectionError(
                f"the reader of Redis at {self.address} did not stop; the bus is unusable"
            )
        self._stopping.clear()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain and self._reader is not None and self._reader.is_alive():
            self._read_back.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        self._link.interrupt()
        alive = join_all([self._reader] if self._reader is not None else [], deadline)
        self._client.close()
        self._link.close()
        self._hold.drop_all()
        return alive

    def _wake_reader(self) -> None:
        # Best effort: the reader's read timeout bounds the delay anyway.
        with contextlib.suppress(BusConnectionError):
            self._runner.run([("PUBLISH", self._wake_channel, b"")], "waking the reader", timeout=0.5)

    # -- sending ----------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            codec.encode(message, max_size=self.max_message_size)  # refused now if it never could be sent
            if self._hold.try_hold(direction, message, unless=self._stopping.is_set):
                return
        self.send_many(direction, (message,))

    def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """Publish *messages* in one round trip (a pipeline of ``PUBLISH``).

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises BusConnectionError: Redis was unreachable for ``send_timeout``
            seconds, or the connection broke after the batch was written (then
            some messages may have been published).
        """
        self._publish_batch(*self._batch(direction, messages))

    def _publish_batch(self, direction: Direction, batch: list[Message], *, raising: bool = True) -> None:
        if not batch:
            return
        channels = [self.channel_name(direction, m.channel_id) for m in batch]
        payloads = [codec.encode(m, max_size=self.max_message_size) for m in batch]
        # Noted before publishing: our own reader may read it back before
        # PUBLISH even returns.
        local = self._registries[direction].channels()
        mine = {
            m.id: (direction, channel)
            for m, channel in zip(batch, channels, strict=True)
            if m.channel_id in local or WILDCARD in local
        }
        self._read_back.expect(mine)
        commands = [("PUBLISH", ch, body) for ch, body in zip(channels, payloads, strict=True)]
        try:
            counts = self._runner.run(commands, f"publishing {len(commands)} message(s)")
        except BusConnectionError:
            self._read_back.forget(mine)
            raise
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        if not self.server.counts_receivers:
            self._read_back.published(mine)
            return
        unrouted = [m for m, receivers in zip(batch, counts, strict=True) if not receivers]
        if unrouted:
            self._read_back.forget(m.id for m in unrouted)
            self._metrics.incr("unrouted", len(unrouted))
            if self.raise_on_unrouted and raising:
                raise UnroutedMessageError(f"{len(unrouted)} of {len(batch)} messages reached no subscriber")

    # -- reading (the reader thread) ----------------------------------------

    def _read(self, conn: Any) -> None:
        read_subscribed(
            conn,
            subscriptions=self._subs,
            stopping=self._stopping,
            receive=self._receive,
            confirmed=self._subscriptions_confirmed,
            health_check_interval=self.health_check_interval,
            health_check_timeout=self.health_check_timeout,
        )

    def _receive(self, channel: str, payload: bytes) -> None:
        if channel == self._wake_channel:
            if payload:
                self._read_back.marker_arrived(int(payload))
            return
        name = self.keys.parse(channel)
        if name is None:
            return
        self._last_message_at = time.time()
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", channel, len(payload), exc)
            return
        self._dispatchers[name.direction].offer(message, None, len(payload))
        # Unlocked test first: a sender notes its id before PUBLISH, so an id
        # of ours is always visible here, and others' messages take no lock.
        self._read_back.arrived(message.id)

    def _disconnected(self) -> None:
        self._link_subscribed = False
        self._read_back.lost_with_connection()

    def _subscriptions_confirmed(self, subscribed: frozenset[str]) -> None:
        """Messages awaited on a channel no longer subscribed will not come: count them ``no_handler``.

        Where ``PUBLISH`` does not say who received (a cluster), a message
        published before this subscription took hold may never come either:
        a marker published now tells, when it comes back, which did not.
        """
        self._link_subscribed = True
        self._read_back.unsubscribed(lambda _direction, channel: covers(subscribed, channel))
        if not self.server.counts_receivers:
            marker = self._read_back.marker()
            with contextlib.suppress(BusConnectionError):  # then the link breaks, and counts them lost
                self._runner.run(
                    [("PUBLISH", self._wake_channel, b"%d" % marker)], "publishing a marker", timeout=0.5
                )

    # -- observing --------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself has arrived and every taken message is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_back.wait(timeout):
            return False
        return self._metrics.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        """Liveness of the reader: connected and subscribed, since when, last message age."""
        since = self._link.connected_since
        last = self._last_message_at
        connected = since is not None and self.running
        return super().health() | {
            "connected": connected,
            "subscribed": connected and self._link_subscribed and self._subs.up_to_date(),
            "connected_since": since,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
            "address": self.address,
            "master": self.server.in_use(),
        }
