"""Many processes on NATS: the ``nats`` backend (the ``nats`` extra, nats-py) and its two deliveries.

- :mod:`.subjects`: the subjects, ``{prefix}.inbound.{channel_id}``, built and read in one place.
- :mod:`.options`: the options of both deliveries, and reading a config.
- :mod:`.loop`: the event loop thread that owns the asyncio client.
- :mod:`.fanout`: :class:`NatsBus`, every subscribed process (or one member
  of a queue group) gets each message, at most once, on core NATS.
- :mod:`.jetstream`, :mod:`.puller`, :mod:`.settle` and :mod:`.queue`:
  :class:`NatsQueueBus`, one member of a group handles each message, at
  least once, on JetStream.
"""

from collections.abc import Mapping
from typing import Any

from ...bus import Bus
from .fanout import NatsBus
from .options import DEFAULT_GROUP, read_config
from .queue import NatsQueueBus
from .subjects import DEFAULT_SUBJECT_PREFIX, Subjects

__all__ = ["DEFAULT_GROUP", "DEFAULT_SUBJECT_PREFIX", "NatsBus", "NatsQueueBus", "Subjects", "create"]


def create(config: Mapping[str, Any]) -> Bus:
    """The ``bus.type: "nats"`` factory: the delivery ``bus.delivery`` names, from the whole *config*.

    :raises ConfigError: naming the key that is wrong and why.
    """
    checked = read_config(config)
    delivery: type[NatsBus] = NatsBus if checked.queue is None else NatsQueueBus
    return delivery.from_checked(checked)
