"""Many processes on one Redis: the ``redis`` backend and its two deliveries.

The modules follow a message's path:

- :mod:`.keyspace`: every key and channel name, built and parsed in one place.
- :mod:`.compat` and :mod:`.client`: the redis-py releases supported, the
  command runner that sends, password redaction, the PING check.
- :mod:`.reader_link`: the supervised connection of a reader thread.
- :mod:`.base`: what both deliveries share.
- :mod:`.fanout`: :class:`RedisBus`, every subscribed process gets each message.
- :mod:`.queue`: :class:`RedisStreamBus`, one member of a group handles each
  message, at least once.
"""

from .fanout import RedisBus
from .keyspace import DEFAULT_PREFIX, Keyspace
from .queue.bus import DEFAULT_GROUP, RedisStreamBus

__all__ = ["DEFAULT_GROUP", "DEFAULT_PREFIX", "Keyspace", "RedisBus", "RedisStreamBus"]
