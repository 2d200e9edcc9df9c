"""Load-balanced delivery on Redis Streams: one member of a group handles each message, at least once.

Each direction and channel is a stream named like the fan-out channel,
``{prefix}inbound:{channel_id}``. Every bus that registers a handler for a
channel joins the stream's consumer group (``group``, created on first use
at the stream's start, so nothing sent before any consumer existed is
missed). Within a group each entry goes to one consumer; another group gets
every entry again, so an audit process can read along.

Threads and who owns them
-------------------------

``send_*`` runs in the caller's thread: ``XADD ... MAXLEN ~ max_len``, in one
pipeline for :meth:`RedisStreamBus.send_many`, with the same connect retry
and :class:`~nekobot_bus.BusConnectionError` as the fan-out. A returned send
is stored in Redis (and on disk, with ``appendfsync always``).

The reader thread (``nekobot-bus-redis-queue-reader``) owns one connection.
It creates missing groups, reads new entries with ``XREADGROUP ... BLOCK``,
decodes them and offers them to the session-affine workers; it never runs a
handler. Every ``claim_idle / 4`` seconds it re-claims the entries its
workers still hold (so a slow handler is not mistaken for a dead consumer)
and takes over entries that other consumers left idle for ``claim_idle``
seconds. A socket timeout of ``BLOCK`` plus ``health_check_timeout`` notices
a paused server; any error closes the connection and reconnects with capped,
jittered backoff for as long as the bus runs.

The workers run the handlers. When every handler returned, the entry is
handed to the acker thread (``nekobot-bus-redis-queue-acker``), which
acknowledges in batches. A handler that raised is retried on the worker,
with backoff, until the entry has been delivered ``max_deliveries`` times;
then the entry goes to ``{prefix}dead:{direction}:{channel_id}`` with the
error, and is acknowledged in the same transaction.

Where a message can be when something dies
------------------------------------------

* Not yet read, or read but not acknowledged: it stays in the stream, or in
  the group's pending list under this consumer. If this process dies, or its
  connection stays down, another consumer claims it after ``claim_idle`` and
  handles it again; with ``dedup_window`` set, an entry whose handling had
  finished (but whose acknowledgement was lost) is recognised by its message
  id and only acknowledged, counted in ``duplicates``.
* Dropped by a full worker queue, or abandoned by a stop in the middle of
  its retries: not acknowledged, so claimed again later.
* Trimmed: ``MAXLEN ~`` drops the oldest entries once a stream is longer
  than ``max_len``, read or not. An entry trimmed while pending is found by
  the claim and counted in ``trimmed``; one trimmed before any consumer read
  it is not seen by anybody: keep ``max_len`` well above the backlog.

Consumers: each bus joins under a new name and, on ``stop()``, leaves the
groups where it holds nothing. Consumers that died holding nothing are
removed by the others after ``10 x claim_idle``; those that held entries
are removed once their entries were claimed.

Ordering: one consumer hands each session's messages to one worker, in
stream order, so a session whose messages all go to one consumer is handled
in order. Without ``shards``, consumers of a group share every stream, so
there is no order across them, and a retried or claimed message is handled
after the ones behind it. With ``shards`` each session lives in one shard
stream that one consumer at a time reads (:mod:`._stream_shards`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from .... import codec
from ...._options import Section
from ...._threads import join_all
from ....bus import Bus
from ....dispatch import Direction, Handler, Settle
from ....errors import BusClosedError, BusConnectionError, MessageDecodeError
from ....message import WILDCARD, Message
from ..base import RedisBase
from ..client import (
    DEFAULT_PREFIX,
    connection_config,
)
from .acker import Acker, Entry
from .shards import ShardLeases, shard_of, shard_stream, split_shard

__all__ = ["DEFAULT_GROUP", "RedisStreamBus"]

logger = logging.getLogger("nekobot_bus.redis_streams")

DEFAULT_GROUP = "nekobot"

_BLOCK = 0.25  # seconds one XREADGROUP waits; bounds how late the reader sees a change
_READ_COUNT = 256  # entries per stream per read
_DISCOVERY_INTERVAL = 1.0  # seconds between looks for new streams, for "*" handlers


@dataclasses.dataclass
class _ReadPlan:
    """What the reader knows on one connection: the streams it reads and when to look again."""

    cleanup_at: float
    streams: list[str] = dataclasses.field(default_factory=list)  # without the wake stream
    grouped: set[str] = dataclasses.field(default_factory=set)  # streams whose group exists
    taken_over: set[str] = dataclasses.field(default_factory=set)  # shards whose leftovers were claimed
    generation: int = -1
    shards: frozenset[str] | None = None  # the shard streams leased, when sharded
    discovery_at: float = 0.0
    claim_at: float = 0.0
    lease_at: float = 0.0


class RedisStreamBus(RedisBase):
    """A bus whose messages wait in Redis Streams until one consumer of a group acknowledges them.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "redis"`` with
    ``bus.delivery: "queue"``. Thread-safe, as every :class:`~nekobot_bus.Bus`.

    :param group: the consumer group; buses in one group share the work.
    :param consumer: this bus's name in the group; default ``host-pid-random``.
    :param claim_idle: seconds an entry may stay unacknowledged by a consumer
        that does not renew it before another consumer takes it over.
    :param max_deliveries: deliveries (handler runs, claims included) before
        a failing entry goes to the dead-letter stream.
    :param retry_backoff: seconds before the first retry of a failed handler;
        doubled for each further retry, up to 30 s.
    :param dedup_window: seconds a handled message id is remembered in Redis,
        so a redelivered copy is acknowledged without being handled again;
        ``0`` turns that off.
    :param max_len: approximate length each stream is trimmed to.
    :param shards: split each stream in this many shards by session, each
        read by one consumer at a time, so that a session's messages are
        handled in order across the group (see :mod:`._stream_shards`);
        ``0``: one stream per channel, order kept within a consumer only.
        Every process of a group must use the same number.
    """

    type_name = "redis"
    delivery = "queue"
    extra_metrics = (
        "sent_in",
        "sent_out",
        "decode_errors",
        "reconnects",
        "connection_errors",
        "trimmed",
        *(
            f"{key}_{suffix}"
            for key in ("acked", "pending", "redelivered", "claimed", "dead_lettered", "duplicates")
            for suffix in ("in", "out")
        ),
    )

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        retry_backoff: float = 0.5,
        dedup_window: float = 0.0,
        max_len: int = 100_000,
        shards: int = 0,
        health_check_timeout: float = 2.0,
        max_message_size: int = codec.DEFAULT_MAX_SIZE,
        redis_options: Mapping[str, Any] | None = None,
        **bus_options: Any,
    ) -> None:
        super().__init__(
            url,
            prefix=prefix,
            max_message_size=max_message_size,
            redis_options=redis_options,
            reader_name="Redis queue reader",
            # Just past the blocking read's: a paused server is noticed.
            reader_socket_timeout=_BLOCK + health_check_timeout,
            **bus_options,
        )
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.retry_backoff = retry_backoff
        self.dedup_window = dedup_window
        self.max_len = max_len
        self.shards = shards
        self.health_check_timeout = health_check_timeout
        self._names = {d: f"{prefix}{d.value}:" for d in Direction}
        self._registry_key = f"{prefix}streams"
        self._reader: threading.Thread | None = None
        self._acker = Acker(
            self._runner,
            group,
            self._metrics,
            done_key=self._done_key,
            dedup_window=dedup_window,
            release=self._release,
        )
        self._leases: dict[str, ShardLeases] = {}  # by stream, with shards; the reader's only
        # Registration changes: written by registering threads, seen by the reader.
        self._subs = threading.Condition()
        self._generation = 0
        self._seen_generation = -1
        self._wake_stream = f"{prefix}wake:{self.consumer}"
        # Entries the workers hold, by (stream, id): when they were taken or last renewed.
        self._held: dict[tuple[str, bytes], float] = {}
        self._held_lock = threading.Lock()
        self._last_message_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<RedisStreamBus {self._state} {self.address} prefix={self.prefix!r} "
            f"group={self.group!r} consumer={self.consumer!r}>"
        )

    # -- config -----------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Bus:
        bus, gateway = Section("bus", config.get("bus")), Section("gateway", config.get("gateway"))
        bus.text("delivery", "queue", choices=("queue",))
        return cls.from_sections(
            bus, Section("redis", config.get("redis")), cls.dispatch_options(bus, gateway)
        )

    @classmethod
    def from_sections(cls, bus: Section, go_redis: Section, options: dict[str, Any]) -> RedisStreamBus:
        """Build from the ``bus`` and Go ``redis`` sections; *options* are the shared dispatch ones."""
        url, prefix, redis_options = connection_config(bus, go_redis)
        own: dict[str, Any] = {
            "group": bus.text("group", DEFAULT_GROUP) or DEFAULT_GROUP,
            "claim_idle": bus.seconds("claim_idle", 30.0, minimum=0.05),
            "max_deliveries": bus.integer("max_deliveries", 5, minimum=1),
            "retry_backoff": bus.seconds("retry_backoff", 0.5),
            "dedup_window": bus.seconds("dedup_window", 0.0),
            "max_len": bus.integer("max_len", 100_000, minimum=1),
            "shards": bus.integer("shards", 0, minimum=0),
            "health_check_timeout": bus.seconds("health_check_timeout", 2.0, minimum=0.1),
            "max_message_size": bus.integer("max_message_size", codec.DEFAULT_MAX_SIZE, minimum=1024),
        }
        if "consumer" in bus:
            own["consumer"] = bus.text("consumer")
        bus.check_no_unknown_keys(also_known=("type", "health_check_interval"))
        go_redis.check_no_unknown_keys()
        return cls(url, prefix=prefix, redis_options=redis_options, **own, **options)

    # -- names ------------------------------------------------------------

    def stream_name(self, direction: Direction, channel_id: str) -> str:
        """The stream of *channel_id* in *direction*, e.g. ``nekobot:bus:inbound:telegram``."""
        return self._names[direction] + channel_id

    def dead_letter_name(self, direction: Direction, channel_id: str) -> str:
        """Where entries of *channel_id* that failed ``max_deliveries`` times go."""
        return f"{self.prefix}dead:{direction.value}:{channel_id}"

    def _direction_of(self, stream: str) -> Direction | None:
        for direction, name in self._names.items():
            if stream.startswith(name):
                return direction
        return None

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        with self._subs:
            self._generation += 1
            generation = self._generation
        if self.running and threading.current_thread() is not self._reader:
            # Wake the reader from its blocking read and wait until it reads the
            # new set of streams: after register_* returns this bus takes
            # entries of that stream; after unregister_* it takes no more.
            with contextlib.suppress(BusConnectionError):
                self._runner.run(
                    [("XADD", self._wake_stream, "MAXLEN", 1, "*", "wake", 1)], "waking the reader"
                )
            timeout = self.send_timeout if self.send_timeout is not None else 30.0
            with self._subs:
                self._subs.wait_for(lambda: self._seen_generation >= generation, timeout)

    def _settle_hook(self, direction: Direction) -> Settle | None:
        return self._settle

    # -- lifecycle --------------------------------------------------------

    def _start_transport(self) -> None:
        # Fail fast, as the fan-out does, when Redis is not there at all.
        self._runner.run([("PING",)], "connecting")
        self._reader = threading.Thread(
            target=self._link.run, args=(self._read,), name="nekobot-bus-redis-queue-reader", daemon=True
        )
        self._reader.start()
        self._acker.start()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain and self._reader is not None and self._reader.is_alive():
            # Take what the streams hold now, so what was sent before stop() is handled.
            self._wait_group_caught_up(deadline)
        self._stopping.set()
        self._link.interrupt()
        return join_all([self._reader] if self._reader is not None else [], deadline)

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        alive = self._acker.stop(deadline)
        if not alive:
            self._leave_group()
        for leases in self._leases.values():
            leases.release_all()
        self._client.close()
        self._link.close()
        return alive

    def _leave_group(self) -> None:
        """Remove this consumer from its groups where it holds nothing (best effort)."""
        with contextlib.suppress(BusConnectionError, redis.RedisError):
            self._runner.run([("DEL", self._wake_stream)], "leaving")
            streams = self._streams_to_read(None, every_shard=True)
            replies = self._runner.run(
                [("XPENDING", s, self.group, "-", "+", 1, self.consumer) for s in streams], "leaving"
            )
            empty = [s for s, r in zip(streams, replies, strict=True) if r == []]
            if empty:
                self._runner.run(
                    [("XGROUP", "DELCONSUMER", s, self.group, self.consumer) for s in empty], "leaving"
                )

    # -- sending ----------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        self.send_many(direction, (message,))

    def send_many(self, direction: Direction, messages: Iterable[Message]) -> None:
        """Add *messages* to their streams in one round trip.

        :raises BusConnectionError: Redis was unreachable for ``send_timeout``
            seconds, or the connection broke after the batch was written (then
            some messages may have been stored).
        """
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        batch = list(messages)
        if not batch:
            return
        commands: list[tuple[Any, ...]] = []
        streams = set()
        for message in batch:
            stream = self.stream_name(direction, message.channel_id)
            if self.shards:
                stream = shard_stream(stream, shard_of(message.session_id, self.shards))
            body = codec.encode(message, max_size=self.max_message_size)
            commands.append(("XADD", stream, "MAXLEN", "~", self.max_len, "*", "message", body))
            streams.add(stream)
        # Announced with every batch, in the same round trip: "*" consumers
        # find streams there, also after a restart that lost the set.
        commands.append(("SADD", self._registry_key, *streams))
        replies = self._runner.run(commands, f"adding {len(batch)} message(s)")
        for reply in replies:
            if isinstance(reply, Exception):
                raise BusConnectionError(f"Redis at {self.address} refused XADD: {reply}")
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))

    # -- reading ----------------------------------------------------------

    def _consumed_streams(self) -> set[str]:
        return {
            self.stream_name(d, channel)
            for d in Direction
            for channel in self._registries[d].channels()
            if channel != WILDCARD
        }

    def _read(self, conn: Any) -> None:
        """The reader's loop on one connection (see :class:`ReaderLink` for the rest)."""
        plan = _ReadPlan(cleanup_at=time.monotonic() + self.claim_idle * 5)
        while not self._stopping.is_set():
            self._prepare(conn, plan, time.monotonic())
            reading = self._streams_with_room(plan.streams)
            if reading is None:
                continue
            count, names = reading
            names.append(self._wake_stream)
            try:
                reply = _call(
                    conn,
                    "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
                    "BLOCK", int(_BLOCK * 1000), "STREAMS", *names, *[">"] * len(names),
                )  # fmt: skip
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                plan.grouped.clear()  # the stream or its group is gone (a restart without persistence)
                continue
            for stream, entries in reply or ():
                name = stream.decode()
                if name == self._wake_stream:
                    _call(conn, "XACK", name, self.group, *[entry_id for entry_id, _ in entries])
                    continue
                self._take(name, [(entry_id, fields, 1) for entry_id, fields in entries], False)

    def _prepare(self, conn: Any, plan: _ReadPlan, now: float) -> None:
        """Everything the reader does between two reads, each at its own pace."""
        if self.shards and now >= plan.lease_at:
            self._refresh_leases(conn)
            plan.lease_at = now + self.claim_idle / 4
        shards = self._readable_shards() if self.shards else None
        if plan.generation != self._generation or now >= plan.discovery_at or shards != plan.shards:
            plan.generation, plan.shards = self._generation, shards
            plan.streams = self._streams_to_read(conn)
            plan.discovery_at = now + _DISCOVERY_INTERVAL
        missing = [s for s in [*plan.streams, self._wake_stream] if s not in plan.grouped]
        if missing:
            self._create_groups(conn, missing)
            plan.grouped.update(missing)
        if self.shards:
            plan.taken_over &= set(plan.streams)
            for stream in plan.streams:
                if stream not in plan.taken_over:
                    self._take_over(conn, stream)
                    plan.taken_over.add(stream)
        if self._seen_generation != plan.generation:
            with self._subs:
                self._seen_generation = plan.generation
                self._subs.notify_all()
        if now >= plan.claim_at:
            self._renew_held()
            self._claim(conn, plan.streams)
            plan.claim_at = now + self.claim_idle / 4
        if now >= plan.cleanup_at:
            self._forget_departed(conn, plan.streams)
            plan.cleanup_at = now + self.claim_idle * 5

    def _streams_with_room(self, streams: list[str]) -> tuple[int, list[str]] | None:
        """The streams whose workers have room, and how many entries to read from each.

        Read no more than the workers can take: entries left in Redis wait
        safely, where a full queue would have to drop them. A direction whose
        workers are busy does not hold up the other. ``None`` (after waiting
        for room up to one read's time) when no direction has room.
        """
        rooms = {d: self._dispatchers[d].room() for d in Direction}
        readable = [s for s in streams if rooms[self._direction_of(s) or Direction.INBOUND] > 0]
        if streams and not readable:
            busy = {self._direction_of(s) or Direction.INBOUND for s in streams}
            self._dispatchers[busy.pop()].wait_for_room(_BLOCK)
            return None
        room = min((rooms[self._direction_of(s) or Direction.INBOUND] for s in readable), default=1)
        return max(1, min(_READ_COUNT, room // max(1, len(readable)))), readable

    def _streams_to_read(self, conn: Any | None, *, every_shard: bool = False) -> list[str]:
        """The streams with handlers here; for ``"*"``, every stream a sender announced.

        Sharded, only the shards this consumer holds, or all with *every_shard*.

        :param conn: the reader's connection, or ``None`` to ask on a pooled one.
        """
        bases = self._bases(conn)
        if not self.shards:
            return sorted(bases)
        if every_shard:
            return sorted(shard_stream(base, k) for base in bases for k in range(self.shards))
        return sorted(s for s in self._readable_shards() if split_shard(s)[0] in bases)

    def _bases(self, conn: Any | None) -> set[str]:
        """The streams (without shard) that have handlers here, announced ones for ``"*"``."""
        bases = self._consumed_streams()
        wildcard = [d for d in Direction if WILDCARD in self._registries[d].channels()]
        if wildcard:
            if conn is None:
                [names] = self._runner.run([("SMEMBERS", self._registry_key)], "listing streams")
            else:
                names = _call(conn, "SMEMBERS", self._registry_key)
            for base, shard in (split_shard(n.decode()) for n in names):
                if (shard is not None) == bool(self.shards) and self._direction_of(base) in wildcard:
                    bases.add(base)
        return bases

    def _refresh_leases(self, conn: Any) -> None:
        """Take part in sharing the shards of each stream read here; leave those no longer read."""
        bases = self._bases(conn)
        for base in bases - set(self._leases):
            self._leases[base] = ShardLeases(
                self._runner,
                prefix=self.prefix,
                group=self.group,
                stream=base,
                consumer=self.consumer,
                shards=self.shards,
                lease_seconds=self.claim_idle,
            )
        for base in set(self._leases) - bases:
            self._leases.pop(base).release_all()
        for leases in self._leases.values():
            leases.refresh(self._holds_stream)

    def _readable_shards(self) -> frozenset[str]:
        return frozenset().union(*(leases.readable for leases in self._leases.values()))

    def _holds_stream(self, stream: str) -> bool:
        with self._held_lock:
            return any(held_stream == stream for held_stream, _ in self._held)

    def _take_over(self, conn: Any, stream: str) -> None:
        """Claim what other consumers left pending in a shard this consumer just got, before newer entries.

        A lease is taken only when free: its former owner gave it back after
        acknowledging all it held, or it died. Anything still pending is a
        dead owner's, and comes first in the session's order.
        """
        rows = _call(conn, "XPENDING", stream, self.group, "-", "+", 10_000)
        me = self.consumer.encode()
        with self._held_lock:
            held = set(self._held)
        deliveries = {
            entry_id: int(count) + 1
            for entry_id, consumer, _idle, count in rows
            if consumer != me and (stream, entry_id) not in held
        }
        if not deliveries:
            return
        claimed = [
            (entry_id, fields)
            for entry_id, fields in _call(conn, "XCLAIM", stream, self.group, self.consumer, 0, *deliveries)
            if fields is not None
        ]
        self._take(stream, [(i, f, deliveries[i]) for i, f in claimed], True)

    def _create_groups(self, conn: Any, streams: list[str]) -> None:
        for stream in streams:
            try:
                # From the stream's start: what was sent before any consumer existed is handled too.
                _call(conn, "XGROUP", "CREATE", stream, self.group, "0", "MKSTREAM")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _renew_held(self) -> None:
        """Renew the entries the workers still hold, so a slow handler is not taken for a dead one."""
        now = time.monotonic()
        stale: dict[str, list[bytes]] = defaultdict(list)
        with self._held_lock:
            for (stream, entry_id), since in self._held.items():
                if now - since > self.claim_idle / 4:
                    stale[stream].append(entry_id)
                    self._held[(stream, entry_id)] = now
        for leases in self._leases.values():
            leases.renew()
        if stale:
            # JUSTID: resets the idle time without counting a delivery.
            self._runner.run(
                [("XCLAIM", s, self.group, self.consumer, 0, *ids, "JUSTID") for s, ids in stale.items()],
                "renewing held entries",
            )

    def _claim(self, conn: Any, streams: list[str]) -> None:
        """Take over entries other consumers (dead ones, presumably) left idle for ``claim_idle``."""
        idle_ms = int(self.claim_idle * 1000)
        with self._held_lock:
            held = set(self._held)
        for stream in streams:
            rows = _call(conn, "XPENDING", stream, self.group, "IDLE", idle_ms, "-", "+", _READ_COUNT)
            deliveries = {
                entry_id: int(count) + 1
                for entry_id, _consumer, _idle, count in rows
                if (stream, entry_id) not in held
            }
            if not deliveries:
                continue
            claimed = [
                (entry_id, fields)
                for entry_id, fields in _call(
                    conn, "XCLAIM", stream, self.group, self.consumer, idle_ms, *deliveries
                )
                if fields is not None
            ]
            gone = len(deliveries) - len(claimed)
            if gone > 0:
                # Since Redis 7, XCLAIM drops entries that were trimmed away from the pending list.
                self._metrics.incr("trimmed", gone)
                logger.warning("%d pending entries of %s were trimmed before being handled", gone, stream)
            self._take(stream, [(i, f, deliveries[i]) for i, f in claimed], True)

    def _forget_departed(self, conn: Any, streams: list[str]) -> None:
        """Delete consumers that hold nothing and were last seen ``10 x claim_idle`` ago.

        Every bus joins under a new name, so without this a group collects a
        consumer for every process that ever ran. Deleting one that holds
        nothing loses nothing, and a live consumer deleted by mistake is
        created again by its next read.
        """
        limit_ms = int(self.claim_idle * 10 * 1000)
        me = self.consumer.encode()
        for stream in streams:
            for row in _call(conn, "XINFO", "CONSUMERS", stream, self.group):
                consumer = _pairs(row)
                name = consumer[b"name"]
                if name != me and int(consumer[b"pending"]) == 0 and int(consumer[b"idle"]) > limit_ms:
                    _call(conn, "XGROUP", "DELCONSUMER", stream, self.group, name)
                    logger.info(
                        "consumer %s left group %s of %s long ago; removed", name.decode(), self.group, stream
                    )

    def _take(self, stream: str, entries: list[tuple[bytes, Any, int]], claimed: bool) -> None:
        direction = self._direction_of(stream)
        if direction is None or not entries:
            return
        self._last_message_at = time.time()
        suffix = direction.suffix
        ready: list[tuple[Message, Entry]] = []
        for entry_id, fields, deliveries in entries:
            payload = _pairs(fields or []).get(b"message", b"")
            entry = Entry(stream, entry_id, direction, payload, deliveries)
            try:
                message = codec.decode(payload, max_size=self.max_message_size)
            except MessageDecodeError as exc:
                self._metrics.incr("decode_errors")
                logger.warning("undecodable entry %s on %s: %s", entry_id.decode(), stream, exc)
                channel_id = split_shard(stream)[0][len(self._names[direction]) :]
                self._dead_letter(entry, f"undecodable: {exc}", channel_id=channel_id)
                continue
            if deliveries > self.max_deliveries:
                # Delivered that often without an acknowledgement: it keeps killing its consumers.
                self._dead_letter(
                    entry, f"delivered {deliveries - 1} times without being acknowledged", message
                )
                continue
            ready.append((message, entry))
        if claimed:
            self._metrics.incr(f"claimed_{suffix}", len(ready))
        if self.dedup_window and ready:
            ready = self._without_duplicates(ready)
        dispatcher = self._dispatchers[direction]
        renewed = time.monotonic()
        for message, entry in ready:
            with self._held_lock:
                self._held[(stream, entry.entry_id)] = time.monotonic()
            self._metrics.incr(f"pending_{suffix}")
            taken = False
            try:
                while not (taken := dispatcher.put_waiting(message, entry, 0.05)):
                    if self._stopping.is_set():
                        return  # this and the rest stay pending in Redis, for the group to claim
                    if time.monotonic() - renewed > self.claim_idle / 4:
                        self._renew_held()
                        renewed = time.monotonic()
            finally:
                if not taken:
                    self._release(entry)

    def _done_key(self, message_id: str) -> str:
        return f"{self.prefix}done:{self.group}:{message_id}"

    def _without_duplicates(self, ready: list[tuple[Message, Entry]]) -> list[tuple[Message, Entry]]:
        replies = self._runner.run(
            [("EXISTS", self._done_key(m.id)) for m, _ in ready], "checking duplicates"
        )
        fresh = []
        for (message, entry), seen in zip(ready, replies, strict=True):
            if seen == 1:
                entry.payload = b""
                self._metrics.incr(f"duplicates_{entry.direction.suffix}")
                self._metrics.incr(f"pending_{entry.direction.suffix}")
                with self._held_lock:
                    self._held[(entry.stream, entry.entry_id)] = time.monotonic()
                self._acker.put(entry)
            else:
                fresh.append((message, entry))
        return fresh

    # -- settling (worker threads) ------------------------------------------

    def _settle(
        self, message: Message, ticket: object, handled: bool, failures: list[tuple[Handler, Exception]]
    ) -> None:
        if not isinstance(ticket, Entry):
            return
        entry = ticket
        if not handled:
            # Taken just before its handler was removed: leave it to the group.
            self._release(entry)
            return
        attempt = entry.deliveries
        dispatcher = self._dispatchers[entry.direction]
        while failures and attempt < self.max_deliveries:
            delay = min(self.retry_backoff * 2 ** (attempt - entry.deliveries), 30.0)
            if self._stopping.wait(delay):
                self._release(entry)  # not acknowledged: another consumer takes it over
                return
            attempt += 1
            self._metrics.incr(f"redelivered_{entry.direction.suffix}")
            failures = dispatcher.run_handlers(message, tuple(handler for handler, _ in failures))
        if failures:
            handler, error = failures[-1]
            self._dead_letter(entry, f"{handler!r} raised {error!r} on delivery {attempt}", message)
            return
        entry.payload = b""
        entry.done_id = message.id if self.dedup_window else ""
        self._acker.put(entry)

    def _release(self, entry: Entry) -> None:
        with self._held_lock:
            self._held.pop((entry.stream, entry.entry_id), None)
        self._metrics.incr(f"pending_{entry.direction.suffix}", -1)

    def _dead_letter(
        self, entry: Entry, error: str, message: Message | None = None, *, channel_id: str = ""
    ) -> None:
        dead = self.dead_letter_name(entry.direction, message.channel_id if message else channel_id)
        fields = (
            "message", entry.payload, "error", error, "deliveries", entry.deliveries, "stream", entry.stream,
            "entry_id", entry.entry_id, "group", self.group, "consumer", self.consumer,
        )  # fmt: skip
        commands = [
            ("MULTI",),
            ("XADD", dead, "MAXLEN", "~", self.max_len, "*", *fields),
            ("XACK", entry.stream, self.group, entry.entry_id),
            ("EXEC",),
        ]
        held = (entry.stream, entry.entry_id) in self._held
        try:
            self._runner.run(commands, "moving an entry to the dead-letter stream")
        except BusConnectionError as exc:
            logger.warning(
                "could not dead-letter %s of %s (%s); it stays pending", entry.entry_id, entry.stream, exc
            )
        else:
            self._metrics.incr(f"dead_lettered_{entry.direction.suffix}")
            logger.error("entry %s of %s moved to %s: %s", entry.entry_id.decode(), entry.stream, dead, error)
        if held:
            self._release(entry)

    # -- observing --------------------------------------------------------

    def _group_state(self) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
        """For each stream read: its last entry id, the last id the group took, and its pending count."""
        commands: list[tuple[Any, ...]] = []
        for stream in self._streams_to_read(None, every_shard=True):
            commands += [("XINFO", "STREAM", stream), ("XINFO", "GROUPS", stream)]
        replies = self._runner.run(commands, "reading the groups' state") if commands else []
        state = []
        for stream_info, groups in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(stream_info, Exception) or isinstance(groups, Exception):
                continue  # no stream yet: nothing was sent to it
            last = _id(_pairs(stream_info)[b"last-generated-id"])
            mine = [g for g in map(_pairs, groups) if g[b"name"] == self.group.encode()]
            if mine:
                state.append((last, _id(mine[0][b"last-delivered-id"]), int(mine[0][b"pending"])))
            else:
                state.append((last, (0, 0), 0))
        return state

    def _wait_group_caught_up(self, deadline: float) -> None:
        """Wait until the group has taken every entry the read streams hold now."""
        try:
            targets = [last for last, _, _ in self._group_state()]
            while time.monotonic() < deadline:
                taken = [delivered for _, delivered, _ in self._group_state()]
                if len(taken) >= len(targets) and all(d >= t for d, t in zip(taken, targets, strict=False)):
                    return
                time.sleep(0.01)
        except BusConnectionError:
            return

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the group has taken and acknowledged everything in the streams this bus reads.

        That includes what other consumers of the group hold; a handler that
        sends keeps the group busy until its messages are handled too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Local, then Redis, then local again: an acknowledgement can reach
            # Redis a moment before its worker counts the message finished.
            if (
                self._metrics.wait_idle(left)
                and self._groups_idle()
                and self._metrics.wait_idle(0)
                and not self._held
            ):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _groups_idle(self) -> bool:
        try:
            state = self._group_state()
        except BusConnectionError:
            return False
        return all(pending == 0 and delivered >= last for last, delivered, pending in state)

    def health(self) -> dict[str, Any]:
        """Liveness of the reader: connected, since when, last entry age, this consumer's name."""
        since = self._link.connected_since
        last = self._last_message_at
        connected = since is not None and self.running
        return {
            "connected": connected,
            "connected_since": since,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
            "address": self.address,
            "group": self.group,
            "consumer": self.consumer,
            "shards": sorted(self._readable_shards()) if self.shards else None,
            "pid": os.getpid(),
        }


def _call(conn: Any, *args: Any) -> Any:
    """Run one command on the reader's connection; an error reply raises ``ResponseError``."""
    conn.send_command(*args)
    return conn.read_response()


def _pairs(flat: Any) -> dict[bytes, Any]:
    """A RESP2 flat ``[key, value, ...]`` reply as a dict."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _id(entry_id: bytes) -> tuple[int, int]:
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)
