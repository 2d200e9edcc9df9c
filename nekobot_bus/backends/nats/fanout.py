"""Fan-out on core NATS subjects: every subscribed process gets each message, at most once.

The loop thread, the connection and its lifecycle are :mod:`.base`'s. Here,
the subscriptions' callbacks decode each message and offer it to the
dispatcher of its direction without waiting for room. When the message's
worker is idle and nothing waits behind the message in its subscription,
the callback lets the worker start first (it waits at most
:data:`~nekobot_bus._workqueue.HAND_OVER_SECONDS` for the worker to take
it, then for the interpreter lock while the handlers run): the rest of the
loop's turn would otherwise keep the interpreter lock while the worker
waits. That takes about a tenth off the send-to-handler latency, and costs
a sender that waits for each confirmation about 6 % of its rate with
trivial handlers (a handler that computes for long delays the loop's turn
by up to the interpreter's switch interval, 5 ms). A burst is handed on as
fast as before (measured with ``nekobot-bus bench``).

Where a message can be lost, and how it shows
---------------------------------------------

Core NATS is at most once, like Redis pub/sub. A send returns once the
server has the message (a ``PUBLISH`` and a ``PING``/``PONG`` round trip),
or raises :class:`~nekobot_bus.BusConnectionError`: at once when the
connection has been down for longer than ``send_timeout``, else after
waiting that long for it (nothing was sent), or when the round trip did not
complete in time (then the client may still deliver it once it
reconnects). NATS does not tell a publisher whether anybody listened, so
there is no ``unrouted`` count. A burst the workers cannot keep up with
waits in memory up to ``intake_bytes``; past that, and when the client's
own pending limits for a subscription are hit (a slow consumer), the
message is counted ``dropped``. A payload that is not a message is counted
``decode_errors``; a message this bus sent to itself and lost with the
connection, ``lost``, once a marker published after the reconnect came
back without it (``backends/read_back.py``). Messages published while a
subscriber was disconnected are not seen by it.

With ``group``, the subscriptions join a NATS queue group of that name: the
server gives each message to one member of the group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import ClassVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ... import codec
from ...dispatch import Direction
from ...errors import BusClosedError, BusConnectionError, MessageDecodeError
from ...message import WILDCARD, Message
from ..read_back import NextMarker, ReadBack
from ..start_hold import NothingSent
from .base import NatsBase, Unreachable
from .confirm import confirm
from .options import FanoutOptions
from .subjects import Subjects, token

__all__ = ["NatsBus"]

logger = logging.getLogger("nekobot_bus.nats")

#: The client's own limit on what one subscription may hold undelivered (our callback never waits for room).
_PENDING_MESSAGES = 65536


class NatsBus(NatsBase):
    """A bus whose messages travel through core NATS subjects, between processes.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "nats"``.
    Thread-safe, as every :class:`~nekobot_bus.Bus`.

    :param nats_url: one ``nats://`` or ``tls://`` URL, or a list of them;
        a user, password or token in them is never shown.
    :param options: the :class:`~.options.NatsOptions`, the
        :class:`~.options.FanoutOptions` (``group``) and the
        :class:`~nekobot_bus.DispatchOptions`, as keyword arguments.
    """

    delivery = "fanout"
    delivery_options = FanoutOptions
    thread_name = "nats"
    extra_metrics: ClassVar[tuple[str, ...]] = (*NatsBase.extra_metrics, "lost")

    def _prepare_transport(self) -> None:
        super()._prepare_transport()
        self.group = self._delivery_options.group
        self._subscriptions: dict[str, Subscription] = {}  # by subject; the loop's alone
        # Messages this bus published to a subject it listens to, not yet read back.
        self._read_back = ReadBack(self._metrics)
        self._marker_subject = ""  # the inbox markers come back on; set by each connect
        self._marker_due = False

    def _forget_subscriptions(self) -> None:
        self._subscriptions.clear()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        if drain:
            self._read_back.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        alive = self._close(deadline)
        self._read_back.stopped()
        return alive

    # -- markers (loop thread) ------------------------------------------------

    async def _connected(self, client: Client) -> None:
        # Markers (read_back.py) come back on an inbox of this connection's own; nats-py
        # subscribes it again after a reconnect, before it sends what it held meanwhile.
        self._marker_subject = client.new_inbox()
        await client.subscribe(self._marker_subject, cb=self._on_marker)

    async def _on_reconnected(self) -> None:
        await super()._on_reconnected()
        # What this bus sent to itself and the broken connection took along is told by a
        # marker: once it is back, what was published before it and has not come is lost.
        await self._send_marker()

    async def _send_marker(self) -> None:
        client = self._client
        if client is None or not self._marker_subject:
            return
        marker = self._read_back.marker()
        with contextlib.suppress(nats.errors.Error, OSError):  # then the next reconnect sends one
            await client.publish(self._marker_subject, b"%d" % marker)

    async def _on_marker(self, msg: Msg) -> None:
        follow = self._read_back.marker_arrived(int(msg.data))
        if follow is NextMarker.NOW:
            await self._send_marker()
        elif follow is NextMarker.AFTER_PUBLISH:
            self._marker_due = True  # sent by the sender whose publish returns next

    # -- subscriptions ---------------------------------------------------------

    def _wanted(self) -> dict[str, Direction]:
        wanted: dict[str, Direction] = {}
        for direction in Direction:
            channels = self._registries[direction].channels()
            if WILDCARD in channels:  # the wildcard covers every channel; exact ones too would deliver twice
                wanted[self.subjects.messages(direction, WILDCARD)] = direction
            else:
                wanted.update({self.subjects.messages(direction, c): direction for c in channels})
        return wanted

    async def _apply_subscriptions(self) -> None:
        client = self._client
        assert client is not None
        wanted = self._wanted()
        for subject in set(self._subscriptions) - set(wanted):
            await self._subscriptions.pop(subject).unsubscribe()
        for subject in set(wanted) - set(self._subscriptions):
            self._subscriptions[subject] = await client.subscribe(
                subject,
                queue=self.group or "",
                cb=self._on_message,
                pending_msgs_limit=_PENDING_MESSAGES,
                pending_bytes_limit=self.nats.intake_bytes,
            )
        await confirm(client, self._flush_timeout)  # the server has them: a message sent now is received
        subjects = set(wanted)
        self._read_back.unsubscribed(lambda d, s: _covered(s, d, subjects, self.subjects))

    async def _on_message(self, msg: Msg) -> None:
        name = self.subjects.parse(msg.subject)
        if name is None:
            return
        payload = msg.data
        self._last_message_at = time.time()
        try:
            message = codec.decode(payload, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", msg.subject, len(payload), exc)
            return
        if not self._read_back.arriving(message.id):
            return  # counted no_handler already (read_back.py)
        self._dispatchers[name.direction].offer(
            message, None, len(payload), hand_over=self._last_of_burst(msg.subject, name.direction)
        )
        self._read_back.arrived(message.id)

    def _last_of_burst(self, subject: str, direction: Direction) -> bool:
        """Whether nothing more waits behind this message in its subscription.

        Then an idle worker takes it before the loop finishes its turn (the
        module's docstring says why). Within a burst the loop hands messages
        on as fast as it can: a hand-over per message would cap it at a few
        tens of thousands a second. The count is per subscription, so a burst
        spread over many exact channels hands over once per channel per read.
        """
        subscription = self._subscriptions.get(subject)
        if subscription is None:  # delivered through the direction's wildcard
            subscription = self._subscriptions.get(self.subjects.messages(direction, WILDCARD))
        return subscription is None or not subscription.pending_msgs

    # -- sending ----------------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            # Refused now if it never could be sent, not when start() sends what was held.
            token(message.channel_id)
            codec.encode(message, max_size=self.max_message_size)
            if self._hold.try_hold(direction, message, unless=self._stopping.is_set):
                return
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(direction, [message])

    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        if not batch:
            return
        listened = self._registries[direction].channels()
        everything = WILDCARD in listened
        pairs: list[tuple[str, bytes]] = []
        mine: dict[str, tuple[Direction, str]] = {}  # what this bus reads back itself
        for message in batch:  # one pass: a single send is the common case, and each step counts
            subject = self.subjects.messages(direction, message.channel_id)
            pairs.append((subject, codec.encode(message, max_size=self.max_message_size)))
            if everything or message.channel_id in listened:
                mine[message.id] = (direction, subject)
        self._read_back.expect(mine)  # before publishing: the loop may read it back before the call returns
        try:
            self._loop.call(self._publish(pairs), self._timeout)
        except Unreachable as exc:
            self._read_back.forget(mine)
            self._metrics.incr("connection_errors")
            raise NothingSent(f"NATS at {self.address} {exc}") from None
        except (TimeoutError, OSError, RuntimeError, nats.errors.Error) as exc:
            self._read_back.forget(mine)
            self._metrics.incr("connection_errors")
            raise BusConnectionError(
                f"NATS at {self.address} did not confirm {len(batch)} message(s) within {self._timeout} s "
                f"({exc or type(exc).__name__}); the client may still send them once reconnected"
            ) from None
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))
        self._read_back.published(mine)
        if self._marker_due:  # a marker found one of these in flight (read_back.py)
            self._marker_due = False
            with contextlib.suppress(TimeoutError, OSError, RuntimeError, nats.errors.Error):
                self._loop.call(self._send_marker(), self._timeout)

    async def _publish(self, pairs: list[tuple[str, bytes]]) -> None:
        client = await self._wait_up()
        for subject, payload in pairs:
            await client.publish(subject, payload)
        # nats-py's flush() returns at once, without a round trip, when its read loop has
        # ended (a connection that just broke, not yet marked so): that is no confirmation.
        reading = getattr(client, "_reading_task", None)
        if not client.is_connected or reading is None or reading.done():
            raise ConnectionError("the connection broke before the server confirmed")
        await confirm(client, self._flush_timeout)
        if not client.is_connected:
            raise ConnectionError("the connection broke before the server confirmed")

    # -- observing ----------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what this bus sent to itself has arrived and every taken message is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_back.wait(timeout):
            return False
        return self._metrics.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _covered(subject: str, direction: Direction, subscribed: set[str], subjects: Subjects) -> bool:
    return subject in subscribed or subjects.messages(direction, WILDCARD) in subscribed
