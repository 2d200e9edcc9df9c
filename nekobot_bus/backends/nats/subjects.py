"""NATS subjects of the bus: ``{prefix}.inbound.{channel_id}`` and ``{prefix}.outbound.{channel_id}``.

A channel id is one subject token, so a channel id that NATS would read as
several tokens or as a wildcard (with ``.`` or ``>``, or one that is not
ASCII) is refused with :class:`~nekobot_bus.InvalidChannelError`, not mapped:
a Go gateway on the same NATS sees the same subjects. The bus's ``"*"``
handlers subscribe to ``{prefix}.{direction}.>``.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from ...dispatch import Direction
from ...errors import ConfigError, InvalidChannelError
from ...message import WILDCARD

__all__ = ["DEFAULT_SUBJECT_PREFIX", "Subject", "Subjects"]

DEFAULT_SUBJECT_PREFIX = "nekobot.bus"

_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space
_NOT_IN_A_TOKEN = frozenset(".*>")
#: Subjects each Subjects keeps built and parsed: every channel of a usual deployment.
_KEPT = 4096


class Subject(NamedTuple):
    direction: Direction
    channel_id: str


class Subjects:
    """Builds and reads the subjects under one *prefix* (tokens separated by dots)."""

    def __init__(self, prefix: str = DEFAULT_SUBJECT_PREFIX) -> None:
        tokens = prefix.split(".")
        if not prefix or not all(_TOKEN.fullmatch(t) and not _NOT_IN_A_TOKEN & set(t) for t in tokens):
            raise ConfigError(
                f"bus.subject_prefix must be dot-separated NATS tokens without wildcards, not {prefix!r}"
            )
        self.prefix = prefix
        self._depth = len(tokens)
        # On every message's path: what they say of the few channels of a deployment is kept.
        self._built = functools.lru_cache(maxsize=_KEPT)(self._build)
        self._parsed = functools.lru_cache(maxsize=_KEPT)(self._parse)

    def messages(self, direction: Direction, channel_id: str) -> str:
        """The subject of *channel_id* in *direction*; for ``"*"``, the one that matches every channel."""
        return self._built(direction, channel_id)

    def parse(self, subject: str) -> Subject | None:
        """The direction and channel of a message subject, or ``None`` for any other subject."""
        return self._parsed(subject)

    def _build(self, direction: Direction, channel_id: str) -> str:
        if channel_id == WILDCARD:
            return f"{self.prefix}.{direction.value}.>"
        return f"{self.prefix}.{direction.value}.{token(channel_id)}"

    def _parse(self, subject: str) -> Subject | None:
        tokens = subject.split(".")
        if len(tokens) != self._depth + 2 or ".".join(tokens[: self._depth]) != self.prefix:
            return None
        try:
            direction = Direction(tokens[self._depth])
        except ValueError:
            return None
        return Subject(direction, tokens[-1])


def token(channel_id: str) -> str:
    """*channel_id*, checked to be one NATS subject token.

    :raises InvalidChannelError: naming the character NATS would misread.
    """
    bad = next((c for c in channel_id if c in _NOT_IN_A_TOKEN or not ("!" <= c <= "~")), None)
    if bad is not None:
        raise InvalidChannelError(
            f"channel id {channel_id!r} cannot be a NATS subject token: {bad!r} is not allowed "
            "(NATS splits subjects at '.', and '*' and '>' are its wildcards; tokens are printable ASCII)"
        )
    return channel_id
