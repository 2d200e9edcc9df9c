"""Continuous pulling from one durable JetStream consumer, on the event loop.

A :class:`Puller` keeps one pull request open at the consumer, for as many
messages as the workers have room for (its *credit*, at most
:data:`MAX_BATCH`), and hands each message to its *deliver* callback the
moment the server sends it: no batch waits to fill, so a message's latency
is one hop from the server. Once the request is used up, or the server
answers it with a status, the next one goes out.

JetStream sends a message under its own subject, so the puller cannot tell
which request it answers; hence one request at a time. Each request has a
reply subject of its own (``{inbox}.{n}``), so a status reply settles the
right one: ``404``/``408`` (no messages, or the request expired) end it and
the next goes out; a refusal (``409``, ``400``) ends it and the next goes
out half a second later; ``503`` or a deleted consumer calls *gone*;
``100`` is a heartbeat. A request
is also given up ``expires`` + 1 s after it was made, in case its status
reply was lost with a connection: the puller never stops asking. A message
the server sent to a request given up still arrives through the same
subscription and is delivered.

Everything here runs on the loop thread; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Puller"]

logger = logging.getLogger("nekobot_bus.nats")

#: Seconds a pull request waits at the server for messages before it expires.
EXPIRES = 5.0
#: Most messages one request asks for.
MAX_BATCH = 256
#: Seconds to wait before asking again after the server refused a request.
_REFUSED_WAIT = 0.5


class Puller:
    """Pulls from the consumer *consumer* of *stream* for as long as it runs.

    :param credit: how many messages this puller may have asked for and not
        yet handed over; asked on the loop, again after every message.
    :param deliver: called on the loop with each message, never with a status.
    :param gone: called on the loop when the server says the consumer is
        gone (deleted, or a server that lost its state): the owner makes it again.
    """

    def __init__(
        self,
        client: Client,
        stream: str,
        consumer: str,
        *,
        credit: Callable[[], int],
        deliver: Callable[[Msg], None],
        gone: Callable[[Puller], None],
    ) -> None:
        self.stream = stream
        self.consumer = consumer
        self._client = client
        self._credit = credit
        self._deliver = deliver
        self._gone = gone
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = client.new_inbox()
        self._subscription: Subscription | None = None
        self._request: tuple[str, float] | None = None  # the open request's reply subject, asked at
        self._count = 0
        self._outstanding = 0  # messages the open request may still bring
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        self.top_up()

    async def stop(self) -> None:
        """Stop asking; what the server sends to a request after this is redelivered after its ack wait."""
        if self._ticker is not None:
            self._ticker.cancel()
        subscription, self._subscription = self._subscription, None
        self._request = None
        self._outstanding = 0
        if subscription is not None:
            await subscription.unsubscribe()

    def reset(self) -> None:
        """Forget the open request (a reconnect took it along) and ask again."""
        self._request = None
        self._outstanding = 0
        self.top_up()

    def top_up(self) -> None:
        """Ask for as many messages as the credit allows, unless a request is open."""
        if self._subscription is None or self._request is not None:
            return
        want = min(self._credit(), MAX_BATCH)
        if want <= 0:
            return  # the workers are full: asked again as each message is settled
        self._count += 1
        reply = f"{self._inbox}.{self._count}"
        self._request = (reply, time.monotonic())
        self._outstanding = want
        request = json.dumps({"batch": want, "expires": int(EXPIRES * 1e9)}).encode()
        asyncio.get_running_loop().create_task(self._ask(reply, request))

    async def _ask(self, reply: str, request: bytes) -> None:
        try:
            await self._client.publish(self._next_subject, request, reply=reply)
        except Exception as exc:  # closed or reconnecting: the tick asks again
            logger.debug("pull request to %s failed: %r", self.consumer, exc)
            self._end(reply)

    def _end(self, reply: str) -> None:
        if self._request is not None and self._request[0] == reply:
            self._request = None
            self._outstanding = 0

    async def _on_reply(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            if self._request is not None:
                self._outstanding -= 1
                if self._outstanding <= 0:
                    self._end(self._request[0])
            self._deliver(msg)
            self.top_up()
            return
        if status == "100":  # an idle heartbeat
            return
        self._end(msg.subject)
        if status in ("404", "408"):  # nothing there, or the request expired: ask again
            self.top_up()
            return
        description = (msg.headers or {}).get("Description", "")
        if status == "503" or (status == "409" and "Deleted" in description):
            logger.warning(
                "JetStream lost the consumer %s (%s %s); making it again", self.consumer, status, description
            )
            self._gone(self)
            return
        # Refused (409: too many waiting requests, a leader change; 400: a bad request): ask
        # again a moment later, not at once, or a lasting refusal would spin the loop.
        logger.debug("JetStream refused a pull request to %s: %s %s", self.consumer, status, description)
        asyncio.get_running_loop().call_later(_REFUSED_WAIT, self.top_up)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(EXPIRES / 2)
            if self._request is not None and self._request[1] < time.monotonic() - EXPIRES - 1.0:
                self._end(self._request[0])
            self.top_up()
