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
twice), decodes each payload and offers it to the dispatcher of its
direction (:mod:`.receiver`); it never runs a handler and never waits for
a worker. When the link is idle it sends PING and reconnects if no PONG
comes back within ``health_check_timeout``, so a half-open or paused
connection is noticed. On any error it closes the connection, waits a
capped, jittered, growing delay and connects again, for as long as the bus
runs; each reconnect is counted.

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

On a Redis Cluster
------------------

With sharded pub/sub (the default) a send is ``SPUBLISH`` to the primary
that serves the channel's slot (:mod:`.cluster` follows ``MOVED``, ``ASK``
and failovers), whose reply counts the subscribers of that primary, where
every bus subscribes, so ``unrouted`` holds (but for the seconds of a
failover: README). The reader is a :class:`~.sharded.ShardedReader`: a
thread per primary that serves a subscribed channel, which follows
migrations and failovers by itself, and ``"*"`` reads the copies senders
make while a ``"*"`` listener runs (:mod:`.every`). With global pub/sub
(``cluster_pubsub: global``) the bus uses one node for everything, as on
one Redis, but ``PUBLISH`` there counts only that node's subscribers:
nothing is counted ``unrouted``, and a marker after each subscription
tells which messages sent to ourselves never came (``lost``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ... import codec
from ...dispatch import Direction
from ...errors import (
    BusClosedError,
    BusConnectionError,
    ConfigError,
    UnroutedMessageError,
)
from ...message import WILDCARD, Message
from ..read_back import ReadBack
from ..start_hold import StartHold
from .base import RedisBase
from .cluster import ClusterRunner
from .every import SETTLE_SECONDS, EveryCopies
from .group import GroupClaims
from .options import FanoutOptions
from .receiver import Receiver
from .sharded import ShardedReader, link_maker
from .subscriber import SingleReader, Subscriptions, read_subscribed
from .topology import ClusterNodes

__all__ = ["RedisBus"]


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
        # The reader thread, or on a cluster with sharded pub/sub a reader per primary; one per start().
        self._readers: SingleReader | ShardedReader | None = None
        self._sharded = isinstance(self.server, ClusterNodes) and self.server.pubsub == "sharded"
        self._every = EveryCopies(self._runner, self.keys) if self._sharded else None
        self._subs = Subscriptions(frozenset({self._wake_channel}))
        self._read_back = ReadBack(self._metrics)
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        # What the readers hand each payload and confirmation to, on their threads.
        self._receiver = Receiver(
            self.keys,
            self._runner,
            self._read_back,
            self._dispatchers,
            self._metrics,
            wake_channel=self._wake_channel,
            max_message_size=self.max_message_size,
            sharded=self._sharded,
            readers=lambda: self._readers,
        )

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
            # The pattern (or the copies) cover every channel; exact ones too would deliver twice.
            return {self.keys.every_copy(direction) if self._sharded else self.keys.every_channel(direction)}
        return {self.keys.messages(direction, c) for c in channels}

    def _is_shard(self, name: str) -> bool:
        """Whether *name* is subscribed with ``SSUBSCRIBE``: a message channel on a sharded cluster."""
        parsed = self.keys.parse(name)
        return parsed is not None and name != self.keys.every_copy(parsed.direction)

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        wanted: set[str] = set()
        everywhere = []
        for d in Direction:
            held = channels if d is direction else self._registries[d].channels()
            wanted |= self._wanted_for(d, held)
            if WILDCARD in held:
                everywhere.append(d)
        self._subs.want(wanted)
        settle = self._every.listen(everywhere, running=self.running) if self._every is not None else 0.0
        readers = self._readers
        if self.running and readers is not None and not readers.owns(threading.current_thread()):
            timeout = self.send_timeout if self.send_timeout is not None else 30.0
            deadline = time.monotonic() + timeout
            for subs, generation in readers.apply():  # the readers this change concerns
                if not subs.wait(generation, max(0.0, deadline - time.monotonic())):
                    raise BusConnectionError(
                        f"Redis at {self.address} did not confirm the subscription change within "
                        f"{timeout} s; the reader applies it once it is connected again"
                    )
            time.sleep(settle)  # until every sender has seen a new '*' lease (every.py)

    # -- lifecycle --------------------------------------------------------

    def _start_transport(self) -> None:
        # Fail at once, saying why, when Redis is not there or refuses us (a password, a database).
        self._runner.run([("PING",)], "connecting")
        # Named at start, in the process that runs it: a bus built before a fork has no member yet.
        member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        for claims in self._claims.values():
            claims.member = member
        timeout = self.send_timeout if self.send_timeout is not None else 30.0
        self._readers = readers = self._make_readers()
        readers.start()
        wanted, _ = self._subs.current()
        generation = self._subs.want(set(wanted))  # a new generation: this reader's own confirmation
        readers.apply()
        subscribed = self._subs.wait(generation, timeout)
        readers.set_starting(False)
        if not subscribed:
            why = readers.last_error()
            self._abandon_start()
            raise BusConnectionError(
                f"could not subscribe on Redis at {self.address} within {timeout} s"
                + (f": {why}" if why else "")
            )
        try:
            if self._every is not None and self._every.listening():
                self._every.renew()  # set the leases now, and let every sender see them (every.py)
                time.sleep(SETTLE_SECONDS)
            # unrouted ones are counted, not raised: start() is not their sender
            self._hold.release(lambda direction, batch: self._publish_batch(direction, batch, raising=False))
        except BaseException:
            self._abandon_start()
            raise

    def _make_readers(self) -> SingleReader | ShardedReader:
        read = functools.partial(
            read_subscribed,
            health_check_interval=self.health_check_interval,
            health_check_timeout=self.health_check_timeout,
        )
        if not self._sharded:
            return SingleReader(
                self._link,
                subs=self._subs,
                stopping=self._stopping,
                read=functools.partial(read, receive=self._receiver.receive),
                confirmed=self._receiver.confirmed,
                wake=lambda: self._publish_wake(self._wake_channel),
            )
        assert self._every is not None
        assert isinstance(self._runner, ClusterRunner)
        assert isinstance(self.server, ClusterNodes)
        readers = ShardedReader(
            subs=self._subs,
            slots=self._runner.slots,
            is_shard=self._is_shard,
            make_link=link_maker(
                self.server,
                self._reader_options,
                name=self.reader_name,
                metrics=self._metrics,
                reachability=self._reachability,
            ),
            read=read,
            receive=self._receiver.receive,
            wake=self._publish_wake,
            wake_name=lambda node: f"{self._wake_channel}:{node}",
            confirmed=self._receiver.confirmed,
            share_confirmed=self._receiver.send_marker,
            every=self._every,
        )
        readers.set_starting(True)
        return readers

    def _abandon_start(self) -> None:
        """Stop the readers of a start() that failed, so that start() may be tried again."""
        self._stopping.set()
        # Bounded: a connect attempt, then the read timeout or the reconnect wait sees _stopping.
        timeout = self.connection.socket_connect_timeout + self.connection.socket_timeout + 1.0
        alive = self._readers.stop(time.monotonic() + timeout) if self._readers is not None else []
        self._readers = None
        if alive:
            raise BusConnectionError(
                f"the reader of Redis at {self.address} did not stop; the bus is unusable"
            )
        self._stopping.clear()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain and self._readers is not None:
            self._read_back.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        self._subs.close()
        alive = self._readers.stop(deadline) if self._readers is not None else []
        self._read_back.stopped()
        self._runner.close()
        self._link.close()
        self._hold.drop_all()
        return alive

    def _publish_wake(self, channel: str) -> None:
        # Best effort: the reader's read timeout bounds the delay anyway.
        with contextlib.suppress(BusConnectionError):
            self._runner.run([("PUBLISH", channel, b"")], "waking the reader", timeout=0.5)

    # -- sending ----------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            codec.encode(message, max_size=self.max_message_size)  # refused now if it never could be sent
            if self._hold.try_hold(direction, message, unless=self._stopping.is_set):
                return
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(direction, [message])

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
        copy = self._every is not None and self._every.wanted(direction)  # for "*" listeners (every.py)
        # Noted before publishing: our own reader may read it back before
        # PUBLISH even returns.
        local = self._registries[direction].channels()
        every = self.keys.every_copy(direction) if self._sharded and WILDCARD in local else None
        mine = {
            m.id: (direction, every or channel)
            for m, channel in zip(batch, channels, strict=True)
            if m.channel_id in local or WILDCARD in local
        }
        self._read_back.expect(mine)
        verb = "SPUBLISH" if self._sharded else "PUBLISH"
        commands = [(verb, ch, body) for ch, body in zip(channels, payloads, strict=True)]
        if copy:
            commands += [("PUBLISH", self.keys.every_copy(direction), body) for body in payloads]
        try:
            counts = self._runner.run(commands, f"publishing {len(batch)} message(s)")[: len(batch)]
        except BaseException:
            self._read_back.forget(mine)
            raise
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        # A node's count of its own subscribers (global pub/sub on a cluster) cannot tell whether
        # anybody got a message, nor can a shard's whether a "*" listener got its copy.
        counted = self.server.counts_receivers and not copy
        unrouted = [m for m, receivers in zip(batch, counts, strict=True) if not receivers] if counted else []
        if unrouted:
            self._read_back.forget(m.id for m in unrouted)
            self._metrics.incr("unrouted", len(unrouted))
        self._read_back.published(mine)
        self._receiver.send_due_markers()  # a marker found these in flight (read_back.py)
        if unrouted and self.raise_on_unrouted and raising:
            raise UnroutedMessageError(f"{len(unrouted)} of {len(batch)} messages reached no subscriber")

    # -- observing --------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself has arrived and every taken message is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_back.wait(timeout):
            return False
        return self._metrics.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def health(self) -> dict[str, Any]:
        """Liveness of the reader: connected and subscribed, since when, last message age."""
        readers = self._readers
        since = readers.connected_since() if readers is not None else None
        last = self._receiver.last_message_at
        connected = since is not None and self.running
        subscribed = readers is not None and readers.subscribed()
        return super().health() | {
            "connected": connected,
            "subscribed": connected and subscribed and self._subs.up_to_date(),
            "connected_since": since,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
            "address": self.address,
            "master": self.server.in_use(),
            **(
                {"primaries": sorted(f"{h}:{p}" for h, p in readers.nodes())}
                if isinstance(readers, ShardedReader)
                else {}
            ),
        }
