"""The queue delivery's reader thread: what it reads, claims and takes over, and how it hands it on.

:meth:`StreamReader.read` is the loop on one connection (the
:class:`~..reader_link.ReaderLink` reconnects around it). Between two
blocking ``XREADGROUP`` calls it does, each at its own pace: lease shards,
find the streams to read, create missing groups (from the stream's start,
so nothing sent before any consumer existed is missed), take over a new
shard's leftovers, renew what the workers hold, claim what dead consumers
left, and forget long-departed consumers. It reads only as many entries as
the workers have room for: what stays in Redis waits safely.

Each entry read is decoded and put on its session's worker queue (the
reader never runs a handler); an undecodable one, or one delivered more
than ``max_deliveries`` times (it keeps killing its consumers), goes to
the dead-letter stream; with ``dedup_window`` one whose message id is
remembered as handled is only acknowledged, counted ``duplicates``.

Error replies are errors: the ones this loop expects are handled by name
(``NOGROUP``: the group or the stream is gone, create it again;
``BUSYGROUP``: it exists already); any other ends the connection, which
the link counts and replaces.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis

from .... import codec
from ....dispatch import Direction, Dispatcher, HandlerRegistry
from ....errors import MessageDecodeError
from ....message import WILDCARD, Message
from ....metrics import Metrics
from ....settle import Acknowledge, DeadLetter
from ..client import CommandRunner
from ..compat import error_code
from ..keyspace import Keyspace
from ..options import QueueOptions
from ..subscriber import Subscriptions
from .acker import Acker
from .ledger import Entry, Ledger
from .shards import ShardLeases
from .wire import call, forget_departed, pairs

__all__ = ["BLOCK", "StreamReader"]

logger = logging.getLogger("nekobot_bus.redis_streams")

#: Seconds one XREADGROUP waits; bounds how late the reader sees a change.
BLOCK = 0.25
_READ_COUNT = 256  # entries per stream per read
_PAGE = 1000  # pending entries per XPENDING page when taking over a shard
_DISCOVERY_INTERVAL = 1.0  # seconds between looks for new streams, for "*" handlers
#: Seconds between two rounds of shard sharing (heartbeat, renew, give back, take):
#: a member that joins or leaves gets or gives its share within about three.
SHARE_INTERVAL = 0.5


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


class StreamReader:
    """The reader of one queue bus; all but :meth:`groups_lost` run on the reader thread."""

    def __init__(
        self,
        *,
        keys: Keyspace,
        runner: CommandRunner,
        options: QueueOptions,
        consumer: str,
        max_message_size: int,
        registries: Mapping[Direction, HandlerRegistry],
        dispatchers: Mapping[Direction, Dispatcher[Entry]],
        ledger: Ledger,
        acker: Acker,
        metrics: Metrics,
        stopping: threading.Event,
        subscriptions: Subscriptions,
    ) -> None:
        self._keys = keys
        self._runner = runner
        self._options = options
        self._group = options.group
        self.consumer = consumer
        self._max_message_size = max_message_size
        self._registries = registries
        self._dispatchers = dispatchers
        self._ledger = ledger
        self._acker = acker
        self._metrics = metrics
        self._stopping = stopping
        self._subs = subscriptions
        self.leases: dict[str, ShardLeases] = {}  # by stream, with shards
        self._known_bases: set[str] | None = None  # what the last discovery found
        self._groups_lost = threading.Event()
        self.last_message_at: float | None = None

    @property
    def wake_stream(self) -> str:
        """The stream whose entry wakes this consumer's blocked read."""
        return self._keys.wake(self.consumer)

    def groups_lost(self) -> None:
        """Any thread: a group may be gone; the reader creates the groups again before its next read."""
        self._groups_lost.set()

    # -- the loop -----------------------------------------------------------

    def read(self, conn: Any) -> None:
        """The reader's loop on one connection (see :class:`~..reader_link.ReaderLink` for the rest)."""
        plan = _ReadPlan(cleanup_at=time.monotonic() + self._options.claim_idle * 5)
        while not self._stopping.is_set():
            if self._groups_lost.is_set():
                self._groups_lost.clear()
                plan.grouped.clear()
            self._prepare(conn, plan, time.monotonic())
            reading = self._streams_with_room(plan.streams)
            if reading is None:
                continue
            count, names = reading
            names.append(self.wake_stream)
            try:
                reply = call(
                    conn,
                    "XREADGROUP", "GROUP", self._group, self.consumer, "COUNT", count,
                    "BLOCK", int(BLOCK * 1000), "STREAMS", *names, *[">"] * len(names),
                )  # fmt: skip
            except redis.ResponseError as exc:
                if error_code(exc) != "NOGROUP":
                    raise
                logger.warning(
                    "group %r of a stream read here is gone (%s); creating it again", self._group, exc
                )
                plan.grouped.clear()
                continue
            for stream, entries in reply or ():
                name = stream.decode()
                if name == self.wake_stream:
                    call(conn, "XACK", name, self._group, *[entry_id for entry_id, _ in entries])
                    continue
                self.take(name, [(entry_id, fields, 1) for entry_id, fields in entries], claimed=False)

    def _prepare(self, conn: Any, plan: _ReadPlan, now: float) -> None:
        """Everything the reader does between two reads, each at its own pace."""
        options = self._options
        if options.shards and now >= plan.lease_at:
            self._refresh_leases(conn)
            plan.lease_at = now + min(SHARE_INTERVAL, options.claim_idle / 4)
        shards = self.readable_shards() if options.shards else None
        generation = self._subs.generation
        if plan.generation != generation or now >= plan.discovery_at or shards != plan.shards:
            plan.generation, plan.shards = generation, shards
            plan.streams = self.streams_to_read(conn)
            plan.discovery_at = now + _DISCOVERY_INTERVAL
        missing = [s for s in [*plan.streams, self.wake_stream] if s not in plan.grouped]
        if missing:
            self._create_groups(conn, missing)
            plan.grouped.update(missing)
        # The streams are read from here on (before taking over leftovers, which
        # may wait for workers that start only once start() has returned).
        self._subs.confirm(plan.generation)
        if options.shards:
            plan.taken_over &= set(plan.streams)
            for stream in plan.streams:
                if stream not in plan.taken_over:
                    self._take_over(conn, stream)
                    plan.taken_over.add(stream)
        if now >= plan.claim_at:
            self.renew_held()
            self._claim(conn, plan.streams)
            plan.claim_at = now + options.claim_idle / 4
        if now >= plan.cleanup_at:
            forget_departed(conn, plan.streams, self._group, self.consumer, options.claim_idle)
            plan.cleanup_at = now + options.claim_idle * 5

    def _direction_of(self, stream: str) -> Direction:
        name = self._keys.parse(stream)
        return name.direction if name is not None else Direction.INBOUND

    def _streams_with_room(self, streams: list[str]) -> tuple[int, list[str]] | None:
        """The streams whose workers have room, and how many entries to read from each.

        Read no more than the workers can take: entries left in Redis wait
        safely, where a full queue would have to drop them. A direction whose
        workers are busy does not hold up the other. ``None`` (after waiting
        for room up to one read's time) when no direction has room.
        """
        rooms = {d: self._dispatchers[d].room() for d in Direction}
        readable = [s for s in streams if rooms[self._direction_of(s)] > 0]
        if streams and not readable:
            busy = {self._direction_of(s) for s in streams}
            self._dispatchers[busy.pop()].wait_for_room(BLOCK)
            return None
        room = min((rooms[self._direction_of(s)] for s in readable), default=1)
        return max(1, min(_READ_COUNT, room // max(1, len(readable)))), readable

    # -- which streams --------------------------------------------------------

    def streams_to_read(self, conn: Any | None, *, every_shard: bool = False) -> list[str]:
        """The streams with handlers here; for ``"*"``, every stream a sender announced.

        Sharded, only the shards this consumer holds, or all with *every_shard*.

        :param conn: the reader's connection, or ``None`` to ask on a pooled one.
        """
        bases = self._bases(conn)
        shards = self._options.shards
        if not shards:
            return sorted(bases)
        if every_shard:
            return sorted(self._keys.shard(base, k) for base in bases for k in range(shards))
        return sorted(s for s in self.readable_shards() if self._keys.unsharded(s) in bases)

    def _bases(self, conn: Any | None) -> set[str]:
        """The streams (without shard) that have handlers here, announced ones for ``"*"``."""
        bases = {
            self._keys.messages(d, channel)
            for d in Direction
            for channel in self._registries[d].channels()
            if channel != WILDCARD
        }
        wildcard = [d for d in Direction if WILDCARD in self._registries[d].channels()]
        if wildcard:
            key = self._keys.announced_streams
            if conn is None:
                [names] = self._runner.run([("SMEMBERS", key)], "listing streams")
            else:
                names = call(conn, "SMEMBERS", key)
            for raw in names:
                name = self._keys.parse(raw.decode())
                if (
                    name
                    and (name.shard is not None) == bool(self._options.shards)
                    and name.direction in wildcard
                ):
                    bases.add(self._keys.messages(name.direction, name.channel_id))
        self._known_bases = bases
        return bases

    def _refresh_leases(self, conn: Any) -> None:
        """Take part in sharing the shards of each stream read here; leave those no longer read."""
        # The streams the last discovery found (every second): no SMEMBERS each round.
        bases = self._known_bases if self._known_bases is not None else self._bases(conn)
        for base in bases - set(self.leases):
            self.leases[base] = ShardLeases(
                self._runner,
                self._keys,
                group=self._group,
                stream=base,
                consumer=self.consumer,
                shards=self._options.shards,
                lease_seconds=self._options.claim_idle,
            )
        for base in set(self.leases) - bases:
            self.leases.pop(base).release_all()
        # Every stream's heartbeat and renewals in one round trip; more only when shards change hands.
        rounds = [(leases, leases.round()) for leases in self.leases.values()]
        if not rounds:
            return
        replies = self._runner.run([c for _, commands in rounds for c in commands], "sharing shards")
        start = 0
        for leases, commands in rounds:
            leases.settle(replies[start : start + len(commands)], self._ledger.holds_stream)
            start += len(commands)

    def readable_shards(self) -> frozenset[str]:
        return frozenset().union(*(leases.readable for leases in self.leases.values()))

    def _create_groups(self, conn: Any, streams: list[str]) -> None:
        for stream in streams:
            try:
                # From the stream's start: what was sent before any consumer existed is handled too.
                call(conn, "XGROUP", "CREATE", stream, self._group, "0", "MKSTREAM")
            except redis.ResponseError as exc:
                if error_code(exc) != "BUSYGROUP":
                    raise

    # -- claiming -------------------------------------------------------------

    def renew_held(self) -> None:
        """Renew the entries the workers still hold, so a slow handler is not taken for a dead one."""
        stale = self._ledger.due_for_renewal(self._options.claim_idle / 4)
        for leases in self.leases.values():
            leases.renew()
        if stale:
            # JUSTID: resets the idle time without counting a delivery.
            self._runner.run(
                [("XCLAIM", s, self._group, self.consumer, 0, *ids, "JUSTID") for s, ids in stale.items()],
                "renewing held entries",
            )

    def _take_over(self, conn: Any, stream: str) -> None:
        """Claim what other consumers left pending in a shard this consumer just got, before newer entries.

        A lease is taken only when free: its former owner gave it back after
        acknowledging all it held, or it died. Anything still pending is a
        dead owner's, and comes first in the session's order. Pages through
        the whole pending list, however long.
        """
        me = self.consumer.encode()
        held = self._ledger.keys()
        start = "-"
        while True:
            rows = call(conn, "XPENDING", stream, self._group, start, "+", _PAGE)
            deliveries = {
                entry_id: int(count) + 1
                for entry_id, consumer, _idle, count in rows
                if consumer != me and (stream, entry_id) not in held
            }
            if deliveries:
                claimed = [
                    (entry_id, fields)
                    for entry_id, fields in call(
                        conn, "XCLAIM", stream, self._group, self.consumer, 0, *deliveries
                    )
                    if fields is not None
                ]
                self.take(stream, [(i, f, deliveries[i]) for i, f in claimed], claimed=True)
            if len(rows) < _PAGE or self._stopping.is_set():
                return
            start = "(" + rows[-1][0].decode()  # exclusive: after the last one seen

    def _claim(self, conn: Any, streams: list[str]) -> None:
        """Take over entries other consumers (dead ones, presumably) left idle for ``claim_idle``."""
        idle_ms = int(self._options.claim_idle * 1000)
        held = self._ledger.keys()
        for stream in streams:
            rows = call(conn, "XPENDING", stream, self._group, "IDLE", idle_ms, "-", "+", _READ_COUNT)
            deliveries = {
                entry_id: int(count) + 1
                for entry_id, _consumer, _idle, count in rows
                if (stream, entry_id) not in held
            }
            if not deliveries:
                continue
            claimed = [
                (entry_id, fields)
                for entry_id, fields in call(
                    conn, "XCLAIM", stream, self._group, self.consumer, idle_ms, *deliveries
                )
                if fields is not None
            ]
            gone = len(deliveries) - len(claimed)
            if gone > 0:
                # Since Redis 7, XCLAIM drops entries that were trimmed away from the pending list.
                self._metrics.incr("trimmed", gone)
                logger.warning("%d pending entries of %s were trimmed before being handled", gone, stream)
            self.take(stream, [(i, f, deliveries[i]) for i, f in claimed], claimed=True)

    # -- handing entries on ---------------------------------------------------

    def take(self, stream: str, entries: list[tuple[bytes, Any, int]], *, claimed: bool) -> None:
        """Decode *entries* of *stream* and put them on their sessions' worker queues, in order.

        An entry enters the :class:`~.ledger.Ledger` only as it is handed on
        (to a worker, or to the acker): if Redis fails half way, what was not
        handed on is not held, so the claim takes it up again.
        """
        name = self._keys.parse(stream)
        if name is None or not entries:
            return
        self.last_message_at = time.time()
        suffix = name.direction.suffix
        ready: list[tuple[Message, Entry]] = []
        for entry_id, fields, deliveries in entries:
            payload = pairs(fields or []).get(b"message", b"")
            entry = Entry(stream, entry_id, name.direction, payload, deliveries)
            if entry.key in self._ledger:
                continue  # delivered again while still in hand (a group created anew)
            try:
                message = codec.decode(payload, max_size=self._max_message_size)
            except MessageDecodeError as exc:
                self._metrics.incr("decode_errors")
                logger.warning("undecodable entry %s on %s: %s", entry_id.decode(), stream, exc)
                self._to_acker(entry, DeadLetter(f"undecodable: {exc}"))
                continue
            if deliveries > self._options.max_deliveries:
                reason = f"delivered {deliveries - 1} times without being acknowledged"
                self._to_acker(entry, DeadLetter(reason))
                continue
            ready.append((message, entry))
        if claimed:
            self._metrics.incr(f"claimed_{suffix}", len(ready))
        if self._options.dedup_window and ready:
            ready = self._without_duplicates(ready)
        self._hand_on(name.direction, ready)

    def _without_duplicates(self, ready: list[tuple[Message, Entry]]) -> list[tuple[Message, Entry]]:
        done = self._runner.run(
            [("EXISTS", self._keys.done(self._group, m.id)) for m, _ in ready], "checking duplicates"
        )
        fresh = []
        for (message, entry), seen in zip(ready, done, strict=True):
            if seen == 1:
                entry.payload = b""
                self._metrics.incr(f"duplicates_{entry.direction.suffix}")
                self._to_acker(entry, Acknowledge())
            else:
                fresh.append((message, entry))
        return fresh

    def _hand_on(self, direction: Direction, ready: list[tuple[Message, Entry]]) -> None:
        dispatcher = self._dispatchers[direction]
        renewed = time.monotonic()
        for message, entry in ready:
            if not self._ledger.hold(entry):
                continue
            taken = False
            try:
                while not (taken := dispatcher.put_waiting(message, entry, 0.05)):
                    if self._stopping.is_set():
                        return  # this and the rest stay pending in Redis, for the group to claim
                    if time.monotonic() - renewed > self._options.claim_idle / 4:
                        self.renew_held()
                        renewed = time.monotonic()
            finally:
                if not taken:  # stopping, or Redis failed while renewing: not in the workers' hands
                    self._ledger.release(entry)

    def _to_acker(self, entry: Entry, outcome: DeadLetter | Acknowledge) -> None:
        """Hand *entry* to the acker, which releases it from the ledger once Redis answered."""
        if self._ledger.hold(entry):
            self._acker.put(entry, outcome)
