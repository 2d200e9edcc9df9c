"""Many processes on one Redis: the ``redis`` backend and its two deliveries.

The modules follow a message's path:

- :mod:`.keyspace`: every key and channel name, built and parsed in one place.
- :mod:`.compat` and :mod:`.client`: the redis-py releases supported, the
  command runner that sends, password redaction, the PING check.
- :mod:`.reader_link`: the supervised connection of a reader thread.
- :mod:`.options`: the options of both deliveries, and reading a config.
- :mod:`.base`: what both deliveries share.
- :mod:`.fanout`: :class:`RedisBus`, every subscribed process gets each message.
- :mod:`.queue`: :class:`RedisStreamBus`, one member of a group handles each
  message, at least once.
"""

from collections.abc import Mapping
from typing import Any

from ...bus import Bus
from .base import RedisBase
from .fanout import RedisBus
from .keyspace import DEFAULT_PREFIX, Keyspace
from .options import DEFAULT_GROUP, read_config
from .queue.bus import RedisStreamBus

__all__ = ["DEFAULT_GROUP", "DEFAULT_PREFIX", "Keyspace", "RedisBase", "RedisBus", "RedisStreamBus", "create"]


def create(config: Mapping[str, Any]) -> Bus:
    """The ``bus.type: "redis"`` factory: the delivery ``bus.delivery`` names, from the whole *config*.

    :raises ConfigError: naming the key that is wrong and why.
    """
    checked = read_config(config)
    delivery: type[RedisBase] = RedisBus if checked.delivery == "fanout" else RedisStreamBus
    return delivery.from_checked(checked)
