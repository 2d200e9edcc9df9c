"""The in-process bus: ``send_*`` hands the message straight to a dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._options import DispatchOptions, dispatch_options, section, split_section
from ..bus import Bus
from ..dispatch import Direction
from ..message import Message

__all__ = ["LocalBus"]


class LocalBus(Bus):
    """One process, no server: handlers run on worker threads (or inline).

    Guarantees: every message a ``send_*`` accepted is handled once, counted
    ``no_handler``, or (on ``stop(drain=False)``) counted ``dropped``; one
    session's messages are handled in send order. Nothing survives the
    process. Thread-safe, as every :class:`~nekobot_bus.Bus`.
    """

    type_name = "local"
    thread_name = "local"

    def _send(self, direction: Direction, message: Message) -> None:
        self._dispatchers[direction].submit(message, self.send_timeout)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalBus:
        split_section("bus", section(config, "bus"), {"dispatch": DispatchOptions.BUS_KEYS}, also=("type",))
        return cls(**attrs.asdict(dispatch_options(config)))
