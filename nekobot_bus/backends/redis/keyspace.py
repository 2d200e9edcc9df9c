"""Every Redis key and channel name the bus uses, built and parsed in one place.

A message of channel ``telegram`` travelling inbound lives under
``{prefix}inbound:telegram``: the pub/sub channel of the fan-out, and the
stream of the queue delivery. With ``shards`` the stream is split in
``{prefix}inbound:telegram[0]`` ... ``[N-1]`` (``[`` cannot appear in a
channel id, so a shard's name never collides with a channel's). The Go
gateway uses the same names, so both can share one Redis.
"""

from __future__ import annotations

import functools
import zlib
from typing import NamedTuple

import attrs

from ...dispatch import Direction
from ...errors import ConfigError
from ...message import WILDCARD

__all__ = ["DEFAULT_PREFIX", "Keyspace", "Name", "shard_of"]

DEFAULT_PREFIX = "nekobot:bus:"

_GLOB = frozenset("*?[]\\")


class Name(NamedTuple):
    """A parsed message name: its direction, its channel, and its shard (``None``: unsharded)."""

    direction: Direction
    channel_id: str
    shard: int | None


def _check_prefix(_instance: object, _attribute: object, prefix: str) -> None:
    if _GLOB & set(prefix):
        raise ConfigError(f"bus.redis_prefix must not contain glob characters * ? [ ] \\, not {prefix!r}")


@attrs.frozen
class Keyspace:
    """The names under one prefix. Immutable, so thread-safe.

    :param prefix: what every name starts with; no glob characters, so that a
        pattern built from it matches only this bus's names.
    """

    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=_check_prefix)

    def in_one_slot(self) -> Keyspace:
        """The same names with the prefix as a hash tag (``{nekobot:bus:}inbound:telegram``): on a
        Redis Cluster all of them share one slot, as the queue delivery's transactions need."""
        return Keyspace("{" + self.prefix + "}")

    # -- messages ---------------------------------------------------------

    def messages(self, direction: Direction, channel_id: str, shard: int | None = None) -> str:
        """The channel (fan-out) or stream (queue) of *channel_id*, e.g. ``nekobot:bus:inbound:telegram``."""
        name = f"{self.prefix}{direction.value}:{channel_id}"
        return name if shard is None else self.shard(name, shard)

    @staticmethod
    def shard(stream: str, shard: int) -> str:
        """The name of *stream*'s shard *shard*: ``nekobot:bus:inbound:telegram[3]``."""
        return f"{stream}[{shard}]"

    def every_channel(self, direction: Direction) -> str:
        """The pub/sub pattern of every channel of *direction*: ``nekobot:bus:inbound:*``."""
        return f"{self.prefix}{direction.value}:{WILDCARD}"

    def every_copy(self, direction: Direction) -> str:
        """On a cluster with sharded pub/sub, where senders copy each message for ``"*"`` listeners:
        ``nekobot:bus:inbound:[every]`` (``[`` is in no channel id)."""
        return f"{self.prefix}{direction.value}:[every]"

    def every_lease(self, direction: Direction) -> str:
        """The key that tells senders on a sharded cluster that a ``"*"`` listener of *direction* runs."""
        return f"{self.prefix}every:{direction.value}"

    # On every message a reader reads; a Keyspace is immutable, so its answers can be kept.
    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def parse(self, name: str) -> Name | None:
        """What :meth:`messages` built *name* from, or ``None`` when it is not a message name here."""
        for direction in Direction:
            head = f"{self.prefix}{direction.value}:"
            if name.startswith(head):
                channel_id, shard = _split_shard(name[len(head) :])
                return Name(direction, channel_id, shard) if channel_id else None
        return None

    def unsharded(self, name: str) -> str:
        """*name* without its shard suffix."""
        return name[: name.rindex("[")] if _split_shard(name)[1] is not None else name

    # -- the queue delivery's bookkeeping -----------------------------------

    def dead_letters(self, direction: Direction, channel_id: str) -> str:
        """Where entries that failed ``max_deliveries`` times go: ``{prefix}dead:inbound:telegram``."""
        return f"{self.prefix}dead:{direction.value}:{channel_id}"

    @property
    def announced_streams(self) -> str:
        """The set of every stream a sender wrote to, for ``"*"`` consumers and ``tail``."""
        return f"{self.prefix}streams"

    def done(self, group: str, message_id: str) -> str:
        """The key that remembers *message_id* as handled by *group* (``dedup_window``)."""
        return f"{self.prefix}done:{group}:{message_id}"

    def claim(self, group: str, direction: Direction, message_id: str) -> str:
        """The key the first member of a fan-out *group* sets to handle *message_id*."""
        return f"{self.prefix}claim:{group}:{direction.value}:{message_id}"

    def wake(self, owner: str) -> str:
        """The channel or stream that wakes the reader of *owner* from its blocking read."""
        return f"{self.prefix}wake:{owner}"

    def shard_members(self, group: str, stream: str) -> str:
        """The sorted set of consumers of *group* sharing the shards of *stream*."""
        return f"{self.prefix}members:{group}:{stream}"

    def shard_lease(self, group: str, stream: str, shard: int) -> str:
        """The lease key of one shard of *stream* in *group*."""
        return f"{self.prefix}lease:{group}:{stream}[{shard}]"


def shard_of(session_id: str, shards: int) -> int:
    """The shard of *session_id*: the same in every process (``hash()`` is not)."""
    return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % shards


def _split_shard(tail: str) -> tuple[str, int | None]:
    if tail.endswith("]") and "[" in tail:
        base, _, number = tail[:-1].rpartition("[")
        if number.isdigit():
            return base, int(number)
    return tail, None
