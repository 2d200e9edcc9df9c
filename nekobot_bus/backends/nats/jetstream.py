"""The JetStream side of the NATS queue delivery: stream and consumer names, and making sure they exist.

Names, all built here and nowhere else:

- a stream per direction, ``{base}_inbound`` and ``{base}_outbound``, each
  capturing ``{prefix}.{direction}.>``, where *base* is the subject prefix
  with its dots (and the slashes JetStream refuses in a name) made ``_``;
- ``{base}_dead``, capturing ``{prefix}.dead.>``: the dead letters, kept;
- a durable consumer per group and channel, ``{group}_{channel}``, filtered
  to that channel's subject, and ``{group}_~all`` for a group's ``"*"``
  handlers, filtered to the direction's every subject. Characters a
  consumer's name cannot hold (and ``_`` and ``~`` themselves) are written
  ``~`` and two hex digits, so two groups or channels never share a name.

A group is one consumer per channel, as a Redis group is one group per
channel stream: its members share that channel's messages, and another
group reads them all again. A group's ``"*"`` consumer is a consumer of
its own, so a group should either handle ``"*"`` in every member or in
none; a message on a channel that one member of a group handles by name
and another by ``"*"`` reaches the group twice.
"""

from __future__ import annotations

import logging
import re

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from ...dispatch import Direction
from ...message import WILDCARD
from .options import JetStreamOptions
from .subjects import Subjects, token

__all__ = ["JetStreamNames", "ensure_consumer", "ensure_streams"]

logger = logging.getLogger("nekobot_bus.nats")

_PLAIN = re.compile(r"[A-Za-z0-9-]")
#: JetStream's default dedup window, used when the bus sends no message ids (dedup_window 0).
_SERVER_DEFAULT_WINDOW = 120.0


def _escaped(text: str) -> str:
    return "".join(c if _PLAIN.fullmatch(c) else f"~{ord(c):02x}" for c in text)


class JetStreamNames:
    """The streams, consumers and dead-letter subjects under one subject prefix."""

    def __init__(self, subjects: Subjects) -> None:
        self.subjects = subjects
        self.base = re.sub(r"[./\\]", "_", subjects.prefix)
        self.dead_stream = f"{self.base}_dead"

    def stream(self, direction: Direction) -> str:
        return f"{self.base}_{direction.value}"

    def captured(self, direction: Direction) -> str:
        """The subjects the direction's stream captures."""
        return self.subjects.messages(direction, WILDCARD)

    def dead_subject(self, direction: Direction, channel_id: str) -> str:
        return f"{self.subjects.prefix}.dead.{direction.value}.{token(channel_id)}"

    def consumer(self, group: str, channel_id: str) -> str:
        """The durable consumer of *group* for *channel_id* (``"*"``: every channel)."""
        if channel_id == WILDCARD:
            return f"{_escaped(group)}_~all"
        return f"{_escaped(group)}_{_escaped(channel_id)}"


async def ensure_streams(js: JetStreamContext, names: JetStreamNames, options: JetStreamOptions) -> None:
    """Create the two message streams and the dead-letter stream, or take them as they are.

    A stream that exists with other limits (another process's ``max_len``)
    is used as it is, and the difference logged: changing a shared stream
    under its other users is for its operator to decide.
    """
    window = options.dedup_window or _SERVER_DEFAULT_WINDOW
    wanted = [(names.stream(d), names.captured(d)) for d in Direction]
    wanted.append((names.dead_stream, f"{names.subjects.prefix}.dead.>"))
    for name, subject in wanted:
        config = StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=options.max_len,
            storage=StorageType.FILE,
            duplicate_window=window,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with another configuration
            info = await js.stream_info(name)
            if info.config.subjects != [subject]:
                raise
            if info.config.max_msgs_per_subject != options.max_len:
                logger.warning(
                    "JetStream stream %s keeps %s messages per channel, not max_len %d; used as it is",
                    name,
                    info.config.max_msgs_per_subject,
                    options.max_len,
                )


async def ensure_consumer(
    js: JetStreamContext, stream: str, name: str, filter_subject: str, options: JetStreamOptions
) -> None:
    """Create the durable consumer *name*, or take it as it is (another member made it).

    Redelivery is unlimited on the server: the bus itself dead-letters a
    message after ``max_deliveries``, so no message is ever left undelivered
    in silence by a server-side limit.
    """
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=options.claim_idle,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=-1,
    )
    try:
        await js.add_consumer(stream, config)
    except BadRequestError:  # exists with another configuration
        info = await js.consumer_info(stream, name)
        if info.config.filter_subject != filter_subject:
            raise
        if info.config.ack_wait != options.claim_idle:
            logger.warning(
                "JetStream consumer %s waits %s s for acks, not claim_idle %s; used as it is",
                name,
                info.config.ack_wait,
                options.claim_idle,
            )
