"""Load-balanced delivery on JetStream: one member of a group handles each message, at least once.

Each direction is a stream, ``{base}_inbound`` and ``{base}_outbound``,
capturing the same subjects as the fan-out, ``{prefix}.inbound.{channel_id}``
(names: :mod:`.jetstream`). Every bus that registers a handler for a channel
joins its group's durable consumer of that channel, created at the stream's
start on first use, so nothing sent before any consumer existed is missed.
Within a group each message goes to one member; another group gets every
message again.

Threads and who owns them
-------------------------

As on the fan-out (:mod:`.fanout`), the loop thread owns the connection.
On it, a :class:`~.puller.Puller` per consumer keeps pull requests open for
as many messages as the workers have room for and offers each message, as
it arrives, to the dispatcher of its direction; it never runs a handler.
The workers run the handlers; the :class:`~.settle.JetStreamSettler`
decides on the worker and carries the outcome out on the loop
(acknowledge, retry aside, dead-letter, release), and reports the messages
in hand in progress every ``claim_idle / 3`` seconds.

``send_*`` runs in the caller's thread and waits, at most ``send_timeout``,
for JetStream's confirmation that the stream stored the message (a
``PubAck``); with ``dedup_window`` each message carries its id as
``Nats-Msg-Id`` and JetStream stores a second send of it within the window
once (counted ``duplicates``). A returned send is stored.

``wait_idle()`` and a draining ``stop()`` wait for the group in the
caller's thread, asking the server on the loop (:mod:`.group_wait`).

Where a message can be when something dies
------------------------------------------

* Stored, not yet delivered: it waits in the stream for the group.
* Delivered, not yet acknowledged (in a worker's queue, in a handler, aside
  for a retry, or in flight to a process that died or lost its connection):
  JetStream delivers it again after ``claim_idle`` without a sign of life,
  to any member. A message whose acknowledgement was lost is handled twice.
* Failed ``max_deliveries`` times: on ``{prefix}.dead.{direction}.{channel_id}``,
  kept in the ``{base}_dead`` stream with the reason.
* Trimmed: a channel keeps ``max_len`` messages; past that the oldest go,
  read or not.
* The server restarted: streams, consumers and what they hold are on its
  disk; the pullers ask again once the client reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, ClassVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ... import codec
from ...dispatch import Direction
from ...errors import BusConnectionError, MessageDecodeError
from ...message import WILDCARD, Message
from ...settle import DeadLetter, RetryPolicy
from ..start_hold import NothingSent
from .base import NatsBase, Unreachable
from .confirm import confirm
from .group_wait import GroupWait
from .jetstream import JetStreamNames, ensure_consumer, ensure_streams
from .one_shot import run_once
from .options import JetStreamOptions
from .puller import Puller
from .replies import ReplySubscriptions
from .settle import Delivery, JetStreamSettler
from .subjects import token

__all__ = ["NatsQueueBus"]

logger = logging.getLogger("nekobot_bus.nats")


class NatsQueueBus(NatsBase):
    """A bus whose messages wait in JetStream streams until one member of a group has handled them.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "nats"`` with
    ``bus.delivery: "queue"``. Thread-safe, as every :class:`~nekobot_bus.Bus`.

    :param options: the :class:`~.options.JetStreamOptions` (``group``,
        ``claim_idle``, ``max_deliveries``, ``retry_backoff``,
        ``dedup_window``, ``max_len``), the connection's
        :class:`~.options.NatsOptions` and the :class:`~nekobot_bus.DispatchOptions`.
    """

    delivery = "queue"
    delivery_options = JetStreamOptions
    thread_name = "nats-queue"
    extra_metrics: ClassVar[tuple[str, ...]] = (
        *NatsBase.extra_metrics,
        *(
            f"{key}_{suffix}"
            for key in ("acked", "ack_failed", "redelivered", "dead_lettered", "duplicates")
            for suffix in ("in", "out")
        ),
    )
    extra_gauges = ("pending_in", "pending_out")

    def _prepare_transport(self) -> None:
        super()._prepare_transport()
        self.queue: JetStreamOptions = self._delivery_options
        self.group = self.queue.group
        self.names = JetStreamNames(self.subjects)
        self._js: JetStreamContext | None = None
        self._pullers: dict[tuple[Direction, str], Puller] = {}  # the loop's alone
        self._settling = JetStreamSettler(
            self._loop,
            self._metrics,
            RetryPolicy(self.queue.max_deliveries, self.queue.retry_backoff),
            claim_idle=self.queue.claim_idle,
            dead_letter=self._file_dead_letter,
            settled=self._top_up,
        )
        self._progress: asyncio.Task[None] | None = None
        self._group_wait = GroupWait(
            self._loop,
            self._metrics,
            self._settling,
            self._pullers,
            js=lambda: self._js,
            running=lambda: self.running,
            timeout=self._timeout,
        )
        self._applying: asyncio.Lock | None = None  # made on the loop, which it belongs to
        self._replies = ReplySubscriptions(self.subjects, self.max_message_size, self._requests)

    def _settler(self, direction: Direction) -> JetStreamSettler:
        return self._settling

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} group={self.queue.group!r}>"

    # -- lifecycle -------------------------------------------------------------

    async def _connected(self, client: Client) -> None:
        self._js = client.jetstream(timeout=self._timeout)
        await ensure_streams(self._js, self.names, self.queue)
        self._progress = asyncio.get_running_loop().create_task(self._settling.keep_in_progress())

    async def _on_reconnected(self) -> None:
        await super()._on_reconnected()
        for puller in self._pullers.values():  # requests of the old connection are gone
            puller.reset()

    def _forget_subscriptions(self) -> None:
        self._pullers.clear()
        self._replies.forget()

    def _listen_for_replies(self, channel_id: str) -> None:
        """A core subscription of the channel's outbound subject (replies.py): a puller would
        take other processes' messages."""
        self._replies.channels |= {channel_id}
        self._handlers_changed(Direction.OUTBOUND, frozenset())  # applied at start() when not running

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """Stop pulling; with *drain*, first let the group take what its streams hold now."""
        pulling = self._client is not None and self._loop.loop is not None
        if drain and pulling and not self._group_wait.caught_up(deadline):
            self._drain_failed = True
        self._stopping.set()
        with contextlib.suppress(Exception):  # the loop is gone already: nothing pulls
            self._loop.call(self._stop_pullers(), max(0.1, deadline - time.monotonic()))
        return []

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        """Once the workers stopped: carry out what they settled, then close the connection."""
        alive = self._close(deadline, before=self._finish_settling)
        self._settling.abandon()
        return alive

    async def _stop_pullers(self) -> None:
        pullers = list(self._pullers.values())
        self._pullers.clear()
        for puller in pullers:
            with contextlib.suppress(Exception):
                await puller.stop()

    async def _finish_settling(self) -> None:
        await self._settling.settled()
        if self._progress is not None:
            self._progress.cancel()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):  # acks in the client's buffer go out first
                await confirm(client, 1)

    # -- consumers ----------------------------------------------------------------

    async def _apply_subscriptions(self) -> None:
        """Pull from the consumer of each channel with handlers here, and from no other.

        One change at a time (registrations from several threads, a consumer
        made again): two interleaved at an ``await`` would both start a puller
        for one channel, and one would pull on, unseen, after ``stop()``.
        """
        if self._applying is None:
            self._applying = asyncio.Lock()
        async with self._applying:
            await self._apply_now()

    async def _apply_now(self) -> None:
        js = self._js
        assert self._client is not None
        assert js is not None
        wanted: set[tuple[Direction, str]] = set()
        for direction in Direction:
            channels = self._registries[direction].channels()
            # The wildcard's consumer covers every channel; the named ones too would deliver twice.
            wanted |= {(direction, WILDCARD)} if WILDCARD in channels else {(direction, c) for c in channels}
        for key in set(self._pullers) - wanted:
            await self._pullers.pop(key).stop()
        for direction, channel in sorted(wanted - set(self._pullers)):
            stream = self.names.stream(direction)
            consumer = self.names.consumer(self.queue.group, channel)
            subject = self.subjects.messages(direction, channel)
            await ensure_consumer(js, stream, consumer, subject, self.queue)
            puller = Puller(
                self._client,
                stream,
                consumer,
                credit=self._credit_of(direction),
                deliver=self._on_delivery,
                gone=self._remake,
            )
            self._pullers[(direction, channel)] = puller
            await puller.start()
        await self._replies.apply(self._client)
        await confirm(self._client, self._flush_timeout)

    def _credit_of(self, direction: Direction) -> Any:
        dispatcher = self._dispatchers[direction]

        def credit() -> int:
            pullers = sum(1 for d, _ in self._pullers if d is direction) or 1
            return max(0, dispatcher.room() // pullers)

        return credit

    def _top_up(self, direction: Direction) -> None:
        for (way, _), puller in self._pullers.items():
            if way is direction:
                puller.top_up()

    def _remake(self, puller: Puller) -> None:
        """The server lost *puller*'s consumer: make the streams and consumers again, retrying
        (1 s, doubling up to 10 s) until it works or the bus stops."""

        async def remake() -> None:
            key = next((k for k, p in self._pullers.items() if p is puller), None)
            if key is None:
                return
            await self._pullers.pop(key).stop()
            wait = 1.0
            while not self._stopping.is_set():
                try:
                    assert self._js is not None
                    await ensure_streams(self._js, self.names, self.queue)
                    await self._apply_subscriptions()
                    return
                except Exception as exc:  # the server is away or busy: again, later
                    self._metrics.incr("connection_errors")
                    logger.warning(
                        "could not make the JetStream consumer %s again (%r); trying again in %.0f s",
                        puller.consumer,
                        exc,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 10.0)

        asyncio.get_running_loop().create_task(remake())

    def _on_delivery(self, msg: Msg) -> None:
        name = self.subjects.parse(msg.subject)
        if name is None:  # captured by a stream ("prefix.inbound.a.b") but no channel's subject
            way = Direction.OUTBOUND if ".outbound." in msg.subject else Direction.INBOUND
            stray = Delivery(msg, way, msg.metadata.num_delivered)
            self._settling.took(stray)
            self._metrics.incr("decode_errors")
            logger.warning("a message on %s is on no channel's subject; dead-lettered", msg.subject)
            self._settling.carry_out(
                _UNDECODABLE, stray, DeadLetter(f"not a channel's subject: {msg.subject}")
            )
            return
        direction = name.direction
        delivery = Delivery(msg, direction, msg.metadata.num_delivered)
        self._settling.took(delivery)
        self._last_message_at = time.time()
        try:
            message = codec.decode(msg.data, max_size=self.max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", msg.subject, len(msg.data), exc)
            self._settling.carry_out(_UNDECODABLE, delivery, DeadLetter(f"undecodable: {exc}"))
            return
        self._dispatchers[direction].offer(message, delivery, len(msg.data))

    async def _file_dead_letter(self, msg: Msg, direction: Direction, reason: str, deliveries: int) -> None:
        assert self._js is not None
        name = self.subjects.parse(msg.subject)
        subject = self.names.dead_subject(direction, name.channel_id if name else "unknown")
        headers = {
            "Nekobot-Reason": reason.replace("\r", " ").replace("\n", " "),
            "Nekobot-Deliveries": str(deliveries),
            "Nekobot-Subject": msg.subject,
        }
        await self._js.publish(subject, msg.data, headers=headers)

    # -- sending --------------------------------------------------------------------

    def _send(self, direction: Direction, message: Message) -> None:
        if not self._hold.released:
            # Before start(): stored now if JetStream answers, as on the Redis queue (another
            # member may take it); else held for start(), behind what is held already.
            token(message.channel_id)
            codec.encode(message, max_size=self.max_message_size)
            unless = self._stopping.is_set
            if not self._hold.empty and self._hold.try_hold(direction, message, unless=unless):
                return
            try:
                self._store_before_start(direction, message)
                return
            except NothingSent:
                if self._hold.try_hold(direction, message, unless=unless):
                    return
        self.send_many(direction, (message,))

    def _store_before_start(self, direction: Direction, message: Message) -> None:
        """Store *message* over a connection of its own (:mod:`.one_shot`), within ``send_timeout``.

        :raises NothingSent: NATS could not be reached.
        """

        async def prepare(js: JetStreamContext) -> None:
            await ensure_streams(js, self.names, self.queue)

        async def send(js: JetStreamContext) -> None:
            await self._store(js, direction, [message])

        run_once(
            self.servers,
            self.address,
            connect_timeout=self.nats.connect_timeout,
            timeout=self._timeout,
            prepare=prepare,
            send=send,
        )
        self._metrics.incr(f"sent_{direction.suffix}")

    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        if not batch:
            return
        for message in batch:
            token(message.channel_id)
        try:
            self._loop.call(self._store_when_up(direction, batch), self._timeout)
        except Unreachable as exc:
            self._metrics.incr("connection_errors")
            raise NothingSent(f"NATS at {self.address} {exc}") from None
        except (TimeoutError, OSError, RuntimeError, nats.errors.Error) as exc:
            self._metrics.incr("connection_errors")
            raise BusConnectionError(
                f"JetStream at {self.address} did not confirm {len(batch)} message(s) within "
                f"{self._timeout} s ({exc or type(exc).__name__}); some may be stored"
            ) from None
        self._metrics.incr(f"sent_{direction.suffix}", len(batch))

    async def _store_when_up(self, direction: Direction, batch: list[Message]) -> None:
        await self._wait_up()
        assert self._js is not None
        await self._store(self._js, direction, batch)

    async def _store(self, js: JetStreamContext, direction: Direction, batch: list[Message]) -> None:
        stream = self.names.stream(direction)
        dedup = self.queue.dedup_window > 0
        acks = await asyncio.gather(
            *(
                js.publish(
                    self.subjects.messages(direction, m.channel_id),
                    codec.encode(m, max_size=self.max_message_size),
                    stream=stream,
                    headers={"Nats-Msg-Id": m.id} if dedup else None,
                )
                for m in batch
            )
        )
        duplicates = sum(1 for ack in acks if ack.duplicate)
        if duplicates:
            self._metrics.incr(f"duplicates_{direction.suffix}", duplicates)

    # -- observing ----------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the group has taken and acknowledged everything in the channels read here.

        That includes what other members of the group hold; a handler that
        sends keeps the group busy until its messages are handled too.
        """
        return self._group_wait.wait_idle(timeout)

    def health(self) -> dict[str, Any]:
        """As the fan-out's, and the group."""
        return super().health() | {"group": self.queue.group}


#: Stands for the message of a payload that could not be decoded, when it is dead-lettered.
_UNDECODABLE = Message(channel_id="undecodable")
