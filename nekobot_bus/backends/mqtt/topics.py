"""MQTT topics of the bus: ``{prefix}/inbound/{channel_id}`` and ``{prefix}/outbound/{channel_id}``.

A channel id is one topic level, so one that MQTT would read as several
levels or as a wildcard (with ``/``, ``+`` or ``#``), or that holds a NUL,
is refused with :class:`~nekobot_bus.InvalidChannelError`, not mapped: other
programs on the same broker see the topics they expect. The bus's ``"*"``
handlers subscribe to ``{prefix}/{direction}/+``. Dead letters of the queue
delivery go to ``{prefix}/dead/{direction}/{channel_id}``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ...dispatch import Direction
from ...errors import ConfigError, InvalidChannelError
from ...message import WILDCARD

__all__ = ["DEFAULT_TOPIC_PREFIX", "Topic", "Topics", "level"]

DEFAULT_TOPIC_PREFIX = "nekobot/bus"

_NOT_IN_A_LEVEL = frozenset("/+#\0")
#: Topics each Topics keeps built and parsed: every channel of a usual deployment.
_KEPT = 4096


class Topic(NamedTuple):
    direction: Direction
    channel_id: str


class Topics:
    """Builds and reads the topics under one *prefix* (levels separated by ``/``)."""

    def __init__(self, prefix: str = DEFAULT_TOPIC_PREFIX) -> None:
        levels = prefix.split("/")
        if (
            not prefix
            or prefix.startswith("$")
            or not all(lv and not _NOT_IN_A_LEVEL & set(lv) for lv in levels)
        ):
            raise ConfigError(
                "bus.topic_prefix must be '/'-separated MQTT topic levels, none empty, without "
                f"'+', '#' or a leading '$', not {prefix!r}"
            )
        self.prefix = prefix
        self._depth = len(levels)
        # On every message's path: what they say of the few channels of a deployment is kept.
        self._built = functools.lru_cache(maxsize=_KEPT)(self._build)
        self._parsed = functools.lru_cache(maxsize=_KEPT)(self._parse)

    def messages(self, direction: Direction, channel_id: str) -> str:
        """The topic of *channel_id* in *direction*; for ``"*"``, the filter that matches every channel."""
        return self._built(direction, channel_id)

    def parse(self, topic: str) -> Topic | None:
        """The direction and channel of a message topic, or ``None`` for any other topic."""
        return self._parsed(topic)

    def _build(self, direction: Direction, channel_id: str) -> str:
        if channel_id == WILDCARD:
            return f"{self.prefix}/{direction.value}/+"
        return f"{self.prefix}/{direction.value}/{level(channel_id)}"

    def dead(self, direction: Direction, channel_id: str) -> str:
        return f"{self.prefix}/dead/{direction.value}/{level(channel_id)}"

    def marker(self, name: str) -> str:
        """A topic of this bus's own, outside the message topics (``wait_idle``'s markers)."""
        return f"{self.prefix}/marker/{name}"

    def _parse(self, topic: str) -> Topic | None:
        levels = topic.split("/")
        if len(levels) != self._depth + 2 or "/".join(levels[: self._depth]) != self.prefix:
            return None
        try:
            direction = Direction(levels[self._depth])
        except ValueError:
            return None
        return Topic(direction, levels[-1])


def level(channel_id: str) -> str:
    """*channel_id*, checked to be one MQTT topic level.

    :raises InvalidChannelError: naming the character MQTT would misread.
    """
    bad = next((c for c in channel_id if c in _NOT_IN_A_LEVEL), None)
    if bad is not None:
        raise InvalidChannelError(
            f"channel id {channel_id!r} cannot be an MQTT topic level: {bad!r} is not allowed "
            "(MQTT splits topics at '/', '+' and '#' are its wildcards, and NUL is refused)"
        )
    return channel_id
