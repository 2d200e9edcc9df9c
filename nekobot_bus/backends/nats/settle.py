"""The JetStream queue's messages in hand, and how each is settled with the server.

A :class:`Delivery` is the ticket of one JetStream message, from the moment
the puller hands it over until the server was told what became of it. The
:class:`JetStreamSettler` keeps every delivery in hand, decides its outcome
on the worker thread with the shared :class:`~nekobot_bus.settle.RetryPolicy`
and carries it out on the loop, so no worker waits for the network:

- :class:`~nekobot_bus.settle.Acknowledge`: ``+ACK``, counted ``acked``.
- :class:`~nekobot_bus.settle.RetryAt`: the dispatcher keeps it aside; the
  server is told it is still in progress meanwhile.
- :class:`~nekobot_bus.settle.DeadLetter`: stored on the dead-letter subject
  (the payload as it came, the reason and the delivery count in headers),
  and only once JetStream confirmed that, terminated (``+TERM``); counted
  ``dead_lettered``.
- :class:`~nekobot_bus.settle.Release`: ``-NAK``, so another member takes it now.

Every ``claim_idle / 3`` seconds each delivery in hand is reported in
progress (``+WPI``), so a slow handler or a retry's wait is not taken for
a dead consumer. Acknowledgements are not confirmed by the server: one the
client could not even queue (its connection closed) is counted
``ack_failed``; one it queued while reconnecting goes out once it is back,
and may come after the server delivered the message again (``claim_idle``
later). Either way the message may be handled twice: at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import attrs
from nats.aio.msg import Msg

from ...dispatch import Direction
from ...message import Message
from ...metrics import Metrics
from ...settle import Acknowledge, DeadLetter, Outcome, Release, RetryPolicy, RetrySettler
from .loop import LoopThread

__all__ = ["Delivery", "JetStreamSettler"]

logger = logging.getLogger("nekobot_bus.nats")


@attrs.define(eq=False)
class Delivery:
    """One JetStream message in hand: its ack subject, direction and delivery count."""

    msg: Msg
    direction: Direction
    deliveries: int


class JetStreamSettler(RetrySettler[Delivery]):
    """Settles the deliveries of one bus. Thread-safe: workers decide, the loop carries out.

    :param dead_letter: a coroutine function filing a message's payload
        with a reason; it raises when JetStream did not confirm.
    :param settled: called on the loop after each outcome was carried out
        (the workers have room again: the pullers may ask for more).
    """

    def __init__(
        self,
        loop: LoopThread,
        metrics: Metrics,
        policy: RetryPolicy,
        *,
        claim_idle: float,
        dead_letter: Any,
        settled: Callable[[Direction], None],
    ) -> None:
        self._loop = loop
        self._metrics = metrics
        self._policy = policy
        self._claim_idle = claim_idle
        self._dead_letter = dead_letter
        self._settled = settled
        self._held: set[Delivery] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._tasks: set[asyncio.Task[None]] = set()  # the loop's alone

    # -- in hand ----------------------------------------------------------------

    def took(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.add(delivery)
        self._metrics.move(f"pending_{delivery.direction.suffix}", 1)

    def _let_go(self, delivery: Delivery) -> None:
        with self._lock:
            if delivery not in self._held:
                return
            self._held.discard(delivery)
            if not self._held:
                self._idle.notify_all()
        self._metrics.move(f"pending_{delivery.direction.suffix}", -1)

    def __len__(self) -> int:
        return len(self._held)

    def abandon(self) -> None:
        """After the loop stopped: what is still in hand is not settled here (``ack_failed``);
        the server delivers it again after ``claim_idle``."""
        with self._lock:
            left = list(self._held)
        for delivery in left:
            self._metrics.incr(f"ack_failed_{delivery.direction.suffix}")
            self._let_go(delivery)

    def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is in hand (every outcome was carried out)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._held, timeout)

    async def keep_in_progress(self) -> None:
        """Tell the server, every ``claim_idle / 3`` seconds, that what is in hand is still worked on."""
        while True:
            await asyncio.sleep(self._claim_idle / 3)
            with self._lock:
                held = list(self._held)
            for delivery in held:
                with contextlib.suppress(Exception):  # a broken connection: the server redelivers
                    await delivery.msg.in_progress()

    # -- the Settler protocol (worker threads) -------------------------------------

    def carry_out(self, message: Message, ticket: Delivery, outcome: Outcome) -> None:
        loop = self._loop.loop
        try:
            assert loop is not None
            loop.call_soon_threadsafe(self._schedule, ticket, outcome)
        except (AssertionError, RuntimeError):  # the loop is closed: the server redelivers it
            self._metrics.incr(f"ack_failed_{ticket.direction.suffix}")
            self._let_go(ticket)

    # -- carrying out (the loop) ------------------------------------------------------

    def _schedule(self, delivery: Delivery, outcome: Outcome) -> None:
        task = asyncio.get_running_loop().create_task(self.settle(delivery, outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait for every outcome handed to the loop so far to be carried out."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        suffix = delivery.direction.suffix
        msg = delivery.msg
        try:
            if isinstance(outcome, Acknowledge):
                await msg.ack()
                self._metrics.incr(f"acked_{suffix}")
            elif isinstance(outcome, DeadLetter):
                await self._dead_letter(msg, delivery.direction, outcome.reason, delivery.deliveries)
                await msg.term()
                self._metrics.incr(f"dead_lettered_{suffix}")
                logger.warning("message on %s dead-lettered: %s", msg.subject, outcome.reason)
            elif isinstance(outcome, Release):
                await msg.nak()
        except Exception as exc:
            self._metrics.incr(f"ack_failed_{suffix}")
            logger.warning(
                "could not settle the message on %s (%r); JetStream delivers it again after claim_idle",
                msg.subject,
                exc,
            )
        finally:
            self._let_go(delivery)
            self._settled(delivery.direction)
