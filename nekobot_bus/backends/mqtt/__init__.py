"""Many processes on an MQTT 5 broker: the ``mqtt`` backend (the ``mqtt`` extra, paho-mqtt 2.x).

- :mod:`.topics`: the topics, ``{prefix}/inbound/{channel_id}``, built and read in one place.
- :mod:`.options`: the options of both deliveries, and reading a config.
- :mod:`.client`: a paho client built from the options.
- :mod:`.base`: :class:`MqttBase`, the connection on paho's network thread,
  with :mod:`.subscriptions` (what it subscribes to, SUBACKs awaited) and
  :mod:`.publish` (sends confirmed by PUBACK, ``unrouted``).
- :mod:`.fanout`: :class:`MqttBus`, every subscribed process gets each message.
- :mod:`.queue`: :class:`MqttQueueBus`, one member of a group (a shared
  subscription) handles each message.
"""

from collections.abc import Mapping
from typing import Any

from ...bus import Bus
from .base import MqttBase
from .fanout import MqttBus
from .options import DEFAULT_GROUP, QueueOptions, read_config
from .queue import MqttQueueBus
from .topics import DEFAULT_TOPIC_PREFIX, Topics

__all__ = ["DEFAULT_GROUP", "DEFAULT_TOPIC_PREFIX", "MqttBase", "MqttBus", "MqttQueueBus", "Topics", "create"]


def create(config: Mapping[str, Any]) -> Bus:
    """The ``bus.type: "mqtt"`` factory: the delivery ``bus.delivery`` names, from the whole *config*.

    :raises ConfigError: naming the key that is wrong and why.
    """
    checked = read_config(config)
    delivery: type[MqttBase] = MqttQueueBus if isinstance(checked.delivery, QueueOptions) else MqttBus
    return delivery.from_checked(checked)
