"""Messages sent before ``start()``, held for it: the same bound and the same count on every remote bus.

A fan-out (Redis pub/sub, NATS core) holds every message sent before
``start()`` (published once subscribed, so the bus's own handlers see
them, as on the local bus). The Redis queue delivery writes them to their
streams at once, and holds only those it could not write because Redis was
unreachable (nothing was sent), and whatever comes after them while they
wait, so that a session's order holds. Either way ``start()`` sends what is
held, in order, and the hold takes no more than the workers' queues do
(``message_queue_size`` x ``workers``): past that a send raises
:class:`~nekobot_bus.BusFullError` at once. A message is checked (encoded)
before it is held, so one that could never be sent is refused to its
sender, not to ``start()``.

What ``start()`` could not send stays held for the next ``start()`` only if
nothing of it was sent (:class:`NothingSent`); a batch that may have
reached the server is not sent twice: it is counted ``dropped`` (its
senders were told long ago that it was taken) and ``start()`` raises. What
is still held when the bus stops without a successful start is counted
``dropped`` too.

The hold's lock is never held across a network call: ``start()`` takes
what is held out of it, sends it, and comes back for more, until the hold
is empty; only then do sends go straight out, so none overtakes a held
message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..dispatch import Direction
from ..errors import BusConnectionError, BusFullError
from ..message import Message
from ..metrics import Metrics

__all__ = ["NothingSent", "StartHold"]

logger = logging.getLogger("nekobot_bus")


class NothingSent(BusConnectionError):
    """A send failed before anything reached the server (no connection could be made)."""


class StartHold:
    """The messages waiting for ``start()``. Thread-safe.

    :param limit: how many may wait.
    """

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._limit = limit
        self._metrics = metrics
        self._held: list[tuple[Direction, Message]] = []
        self._lock = threading.Lock()
        self._released = False

    @property
    def released(self) -> bool:
        """``start()`` has sent what was held: sends go straight out."""
        return self._released

    @property
    def empty(self) -> bool:
        return not self._held

    def try_hold(self, direction: Direction, message: Message, *, unless: Callable[[], bool]) -> bool:
        """Hold *message* if the hold is not released and *unless* is false; ``True`` if it was held.

        *unless* is checked under the hold's lock, so a ``start()`` that
        releases the hold meanwhile leaves the message to the caller.

        :raises BusFullError: the hold is full.
        """
        with self._lock:
            if self._released or unless():
                return False
            if len(self._held) >= self._limit:
                self._metrics.incr("send_timeouts")
                raise BusFullError(
                    f"{self._limit} messages already wait for start(); {message.id!r} was not sent"
                )
            self._held.append((direction, message))
            return True

    def release(self, send: Callable[[Direction, list[Message]], None]) -> None:
        """Send what is held with *send*, a direction's batch at a time, until nothing is; then let
        sends go straight out.

        :raises NothingSent: from *send*: that batch and what came after it stay held.
        :raises Exception: anything else *send* raised; that batch is counted ``dropped``
            (it may have been sent), the rest stays held.
        """
        while True:
            with self._lock:
                if not self._held:
                    self._released = True
                    return
                taken, self._held = self._held, []
            for direction in Direction:
                batch = [m for d, m in taken if d is direction]
                if not batch:
                    continue
                rest = [(d, m) for d, m in taken if d is not direction]
                try:
                    send(direction, batch)
                except NothingSent:
                    self._put_back(taken)
                    raise
                except Exception as exc:
                    self._put_back(rest)
                    logger.warning(
                        "%d message(s) held for start() may or may not have been sent (%s); "
                        "not sent again, counted dropped",
                        len(batch),
                        exc,
                    )
                    self._count_dropped(batch, direction)
                    raise
                taken = rest

    def _put_back(self, messages: list[tuple[Direction, Message]]) -> None:
        with self._lock:
            self._held = messages + self._held

    def drop_all(self) -> None:
        """Count what is still held ``dropped``, as the local bus counts what it never handled."""
        with self._lock:
            held, self._held = self._held, []
        if held:
            logger.warning(
                "%d message(s) sent before a start() that never succeeded were not sent", len(held)
            )
        for direction in Direction:
            self._count_dropped([m for d, m in held if d is direction], direction)

    def _count_dropped(self, messages: list[Message], direction: Direction) -> None:
        for _ in messages:
            self._metrics.accepted(f"messages_{direction.suffix}")
            self._metrics.finished(f"dropped_{direction.suffix}")
