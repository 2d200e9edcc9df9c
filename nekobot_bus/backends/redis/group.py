"""One member of a group handles each fan-out message: a claim per message id in Redis.

Every process of a group receives every message on its channels (that is
pub/sub), so before the handlers run, a worker sets the message's claim key,
``{prefix}claim:{group}:{direction}:{message_id}``, with ``SET ... NX EX
claim_window``. The first member to set it handles the message; the others
count it ``claimed_elsewhere`` and go on. Messages published by a Go agent
with a plain ``PUBLISH`` are claimed just the same: the claim needs only
the message id (a message without an id, which the wire allows, is
claimed by a digest of its encoding).

At most once per group: a member that dies after its claim and before its
handlers finished loses the message (the queue delivery is at least once).
A claim that cannot be set because Redis is away counts the message
``dropped`` in this member; the others fare no better, so the message is
lost to the group, and counted. A member whose handlers for the channel
were unregistered takes no claim, so the message goes to one that has some.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ... import codec
from ...dispatch import Direction
from ...message import Message
from .client import CommandRunner
from .keyspace import Keyspace

__all__ = ["GroupClaims", "claim_id"]


def claim_id(message: Message) -> str:
    """What a group claims *message* by: its id, or for a message without one (the wire allows
    it) a digest of its encoding, so that id-less messages do not all claim one key."""
    if message.id:
        return message.id
    return "sha1:" + hashlib.sha1(codec.encode(message)).hexdigest()


class GroupClaims:
    """The :class:`~nekobot_bus.settle.Gate` of one direction of a grouped fan-out bus. Thread-safe."""

    def __init__(
        self,
        runner: CommandRunner,
        keys: Keyspace,
        direction: Direction,
        *,
        group: str,
        window: float,
    ) -> None:
        self._runner = runner
        self._keys = keys
        self._direction = direction
        self.group = group
        #: Who takes the claims: host, process id and a random part; set by the bus's start().
        self.member = ""
        self._window_ms = max(1, int(window * 1000))

    def admit(self, message: Message, ticket: Any) -> bool:
        key = self._keys.claim(self.group, self._direction, claim_id(message))
        [reply] = self._runner.run(
            [("SET", key, self.member, "NX", "PX", self._window_ms)], f"claiming message {message.id!r}"
        )
        return reply is not None
