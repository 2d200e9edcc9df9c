"""Session order across consumers: streams split in shards, each read by one consumer at a time.

With ``shards: N`` a message goes to the stream ``{name}[k]``, where ``k`` is
a stable hash of its session id modulo ``N``: a session always lands in the
same shard. (``[`` cannot appear in a channel id, so shard names never
collide with a channel's.) A consumer reads a shard only while it holds the
shard's lease, a Redis key set with ``NX`` and a time to live of
``claim_idle``. So one consumer at a time reads a session, and one
consumer's workers keep a session in order.

Sharing, per stream among the consumers that read it, in rounds every half
second (``SHARE_INTERVAL``, or ``claim_idle / 4`` if shorter): they
heartbeat into a sorted set; each computes its share of the ``N`` shards
from the live members' count and its rank, renews its leases, takes free
leases up to its share, and gives back extras once it no longer holds
entries of them (it stops reading them first). So a member that joins gets
its share within about three rounds once the owners' workers finish what
they hold of those shards; one that stops gives its shards back at once;
one that dies leaves them until its leases expire, ``claim_idle`` later. A
consumer that takes over a shard first claims the entries the previous
owner left pending, and handles them before any newer one.

The limit is a lease's: a consumer paused for longer than ``claim_idle``
(not dead) loses its shards and may finish an entry that the new owner also
handles, out of order. Keep ``claim_idle`` well above the longest pause.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from ....errors import BusConnectionError
from ..client import CommandRunner
from ..keyspace import Keyspace

__all__ = ["ShardLeases"]

logger = logging.getLogger("nekobot_bus.redis_streams")

# Heartbeat: note this member with the server's clock, forget the silent, list the rest.
_HEARTBEAT = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now, ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('pexpire', KEYS[1], tonumber(ARGV[2]) * 4)
return redis.call('zrange', KEYS[1], 0, -1)
"""
# Renew or release a lease only if this consumer still holds it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class ShardLeases:
    """The shards of one stream that one consumer holds; used by its reader thread only.

    :param stream: the stream's name without a shard, e.g. ``nekobot:bus:inbound:telegram``.
    :param lease_seconds: a lease's time to live; renewed four times within it.
    """

    def __init__(
        self,
        runner: CommandRunner,
        keys: Keyspace,
        *,
        group: str,
        stream: str,
        consumer: str,
        shards: int,
        lease_seconds: float,
    ) -> None:
        self._runner = runner
        self._keys = keys
        self._group = group
        self.stream = stream
        self._members_key = keys.shard_members(group, stream)
        self._heartbeat = runner.script(_HEARTBEAT)
        self._renew = runner.script(_RENEW)
        self._release = runner.script(_RELEASE)
        self._consumer = consumer
        self.shards = shards
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._held: set[int] = set()
        self._draining: set[int] = set()
        self._round_held: list[int] = []  # the leases renewed by the round under way
        # Where this consumer starts looking for free shards, so that members spread out.
        self._offset = zlib.crc32(consumer.encode()) % shards

    @property
    def readable(self) -> frozenset[str]:
        """The shard streams this consumer may read now: held and not being given back."""
        return frozenset(self._keys.shard(self.stream, k) for k in self._held - self._draining)

    def _key(self, shard: int) -> str:
        return self._keys.shard_lease(self._group, self.stream, shard)

    def renew(self) -> None:
        """Extend every lease held; forget those another consumer has taken meanwhile."""
        held = sorted(self._held)
        if held:
            self._renewed(held, self._runner.run([self._renewal(k) for k in held], "renewing leases"))

    def _renewal(self, shard: int) -> tuple[object, ...]:
        return self._renew.call([self._key(shard)], [self._consumer, self._lease_ms])

    def _renewed(self, held: list[int], replies: list[object]) -> None:
        for shard, renewed in zip(held, replies, strict=True):
            if renewed != 1:
                logger.warning(
                    "lost the lease of %s (this consumer was silent too long)",
                    self._keys.shard(self.stream, shard),
                )
                self._held.discard(shard)
                self._draining.discard(shard)

    def round(self) -> list[tuple[object, ...]]:
        """The commands of one sharing round, for the reader to send with other streams' in one
        round trip: the heartbeat, then a renewal of each lease held."""
        self._round_held = sorted(self._held)
        heartbeat = self._heartbeat.call([self._members_key], [self._consumer, self._lease_ms])
        return [heartbeat, *(self._renewal(k) for k in self._round_held)]

    def settle(self, replies: list[object], holds: Callable[[str], bool]) -> None:
        """Act on the replies to :meth:`round`: give back what is over this consumer's share (once
        its workers hold nothing of it), take free shards up to it (a round trip each, only then).

        :param holds: whether this consumer's workers still hold entries of a shard stream.
        """
        members, *renewals = replies
        self._renewed(self._round_held, renewals)
        names = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)  # type: ignore[attr-defined]
        rank = names.index(self._consumer) if self._consumer in names else len(names)
        count = max(1, len(names))
        share = self.shards // count + (1 if rank < self.shards % count else 0)
        # Over the share: stop reading the highest shards, and give each back
        # once no entry of it is left with the workers. Under it again: read on.
        need = len(self._held) - share - len(self._draining)
        if need > 0:
            self._draining |= set(sorted(self._held - self._draining, reverse=True)[:need])
        while self._draining and len(self._held) - len(self._draining) < share:
            self._draining.remove(min(self._draining))
        for shard in sorted(self._draining):
            if not holds(self._keys.shard(self.stream, shard)):
                self._runner.run(
                    [self._release.call([self._key(shard)], [self._consumer])], "giving back a shard"
                )
                self._held.discard(shard)
                self._draining.discard(shard)
        for step in range(self.shards):
            if len(self._held) >= share:
                break
            shard = (self._offset + step) % self.shards
            if shard in self._held:
                continue
            [taken] = self._runner.run(
                [("SET", self._key(shard), self._consumer, "NX", "PX", self._lease_ms)], "taking a shard"
            )
            if taken:
                self._held.add(shard)

    def refresh(self, holds: Callable[[str], bool]) -> None:
        """One sharing round of this stream alone: :meth:`round`, sent, then :meth:`settle`."""
        self.settle(self._runner.run(self.round(), "sharing shards"), holds)

    def release_all(self) -> None:
        """Give back every lease (at stop); best effort."""
        try:
            self._runner.run(
                [self._release.call([self._key(k)], [self._consumer]) for k in sorted(self._held)]
                + [("ZREM", self._members_key, self._consumer)],
                "giving back shards",
                timeout=1.0,
            )
        except BusConnectionError as exc:
            logger.warning("could not give back the shards (%s); they free themselves after claim_idle", exc)
        self._held.clear()
        self._draining.clear()
