"""The in-process bus: ``send_*`` hands the message straight to a dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._options import DispatchOptions, dispatch_options, section, split_section
from ..bus import Bus
from ..dispatch import Direction
from ..errors import ConfigError
from ..message import Message

__all__ = ["LocalBus"]


class LocalBus(Bus):
    """One process, no server: handlers run on worker threads (or inline).

    Guarantees: every message a ``send_*`` accepted is handled once, counted
    ``no_handler``, or (on ``stop(drain=False)``) counted ``dropped``; one
    session's messages are handled in send order. Nothing survives the
    process. Thread-safe, as every :class:`~nekobot_bus.Bus`.
    """

    thread_name = "local"

    def _send(self, direction: Direction, message: Message) -> None:
        self._dispatchers[direction].submit(message, self.send_timeout)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalBus:
        bus = section(config, "bus")
        remote = sorted(k for k in bus if k.startswith(("redis_", "nats_", "mqtt_")) or k == "delivery")
        if remote and "type" not in bus:  # the type forgotten: a local bus would ignore them all
            named = {k.partition("_")[0] for k in remote} & {"nats", "mqtt"}
            wanted = named.pop() if len(named) == 1 else "redis"
            raise ConfigError(
                f"bus.{remote[0]} is for a remote bus, but bus.type is 'local' when not given: "
                f'add "type": "{wanted}" to bus'
            )
        split_section("bus", bus, {"dispatch": DispatchOptions.BUS_KEYS}, also=("type",))
        return cls(**attrs.asdict(dispatch_options(config)))
