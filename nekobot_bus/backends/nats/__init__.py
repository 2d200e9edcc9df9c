"""Many processes on NATS: the ``nats`` backend (the ``nats`` extra, nats-py) and its two deliveries.

- :mod:`.subjects`: the subjects, ``{prefix}.inbound.{channel_id}``, built and read in one place.
- :mod:`.options`: the options of both deliveries, and reading a config.
- :mod:`.loop`: the event loop thread that owns the asyncio client.
- :mod:`.base`: :class:`NatsBase`, the connection and lifecycle both deliveries share.
- :mod:`.fanout`: :class:`NatsBus`, every subscribed process (or one member
  of a queue group) gets each message, at most once, on core NATS.
- :mod:`.jetstream`, :mod:`.puller`, :mod:`.settle`, :mod:`.group_state`,
  :mod:`.one_shot` and :mod:`.queue`: :class:`NatsQueueBus`, one member of
  a group handles each message, at least once, on JetStream.
"""

from collections.abc import Mapping
from typing import Any

from ...bus import Bus
from .base import NatsBase
from .fanout import NatsBus
from .options import DEFAULT_GROUP, JetStreamOptions, read_config
from .queue import NatsQueueBus
from .subjects import DEFAULT_SUBJECT_PREFIX, Subjects

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_SUBJECT_PREFIX",
    "NatsBase",
    "NatsBus",
    "NatsQueueBus",
    "Subjects",
    "create",
]


def create(config: Mapping[str, Any]) -> Bus:
    """The ``bus.type: "nats"`` factory: the delivery ``bus.delivery`` names, from the whole *config*.

    :raises ConfigError: naming the key that is wrong and why.
    """
    checked = read_config(config)
    delivery: type[NatsBase] = NatsQueueBus if isinstance(checked.delivery, JetStreamOptions) else NatsBus
    return delivery.from_checked(checked)
