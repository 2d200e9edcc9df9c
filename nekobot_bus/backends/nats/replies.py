"""The JetStream queue's replies to requests: read from the subjects without taking them.

On the queue delivery an outbound message goes to one member of the group,
likely not the process that asked. A JetStream send is also an ordinary
publish on the channel's subject (the stream captures it), so a bus that
makes requests subscribes to the outbound subject of each channel it asked
on, with plain core NATS: it takes nothing from the group's consumers, and
what it reads goes to :meth:`PendingRequests.offer
<nekobot_bus.requests.PendingRequests.offer>` alone.

Core NATS is at most once: a reply published while the connection is down
is not read here (the request times out), though the group still gets it.
An outbound message that is not a message is passed over: the group counts it.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ... import codec
from ...dispatch import Direction
from ...errors import MessageDecodeError
from ...requests import PendingRequests
from .subjects import Subjects

__all__ = ["ReplySubscriptions"]

logger = logging.getLogger("nekobot_bus.nats")


class ReplySubscriptions:
    """The core subscriptions of the outbound subjects a bus awaits replies on; the loop's alone.

    :param requests: what each message read is offered to, decoded only while one waits.
    """

    def __init__(self, subjects: Subjects, max_message_size: int, requests: PendingRequests) -> None:
        self._subjects = subjects
        self._max_message_size = max_message_size
        self._requests = requests
        self.channels: frozenset[str] = frozenset()  # set by any thread, read on the loop
        self._held: dict[str, Subscription] = {}

    async def apply(self, client: Client) -> None:
        """Subscribe to the channels not subscribed yet (the caller flushes, which confirms them)."""
        for channel in sorted(self.channels - self._held.keys()):
            subject = self._subjects.messages(Direction.OUTBOUND, channel)
            self._held[channel] = await client.subscribe(subject, cb=self._read)

    def forget(self) -> None:
        """The connection they were on is gone."""
        self._held.clear()

    async def _read(self, msg: Msg) -> None:
        if not self._requests.waiting:
            return
        try:
            message = codec.decode(msg.data, max_size=self._max_message_size)
        except MessageDecodeError as exc:  # the group's consumer counts it
            logger.debug("a reply candidate on %s is not a message: %s", msg.subject, exc)
            return
        self._requests.offer(message)
