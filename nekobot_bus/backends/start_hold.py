"""Messages sent before ``start()``, held for it: the same bound and the same count on every remote bus.

A fan-out (Redis pub/sub, NATS core) holds every message sent before
``start()`` (published once subscribed, so the bus's own handlers see
them, as on the local bus). The Redis queue delivery writes them to their
streams at once, and holds only those it could not write because Redis was
unreachable (nothing was sent). Either
way ``start()`` sends what is held, in order, and the hold takes no more
than the workers' queues do (``message_queue_size`` x ``workers``): past
that a send raises :class:`~nekobot_bus.BusFullError` at once. What is still
held when the bus stops without a successful start is counted ``dropped``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..dispatch import Direction
from ..errors import BusFullError
from ..message import Message
from ..metrics import Metrics

__all__ = ["StartHold"]

logger = logging.getLogger("nekobot_bus")


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

    def try_hold(self, direction: Direction, message: Message, *, unless: Callable[[], bool]) -> bool:
        """Hold *message* if the hold is not released and *unless* is false; ``True`` if it was held.

        *unless* is checked under the hold's lock, so a ``start()`` that
        releases the hold meanwhile sends the message or leaves it to the caller.

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
        """Send what is held with *send*, a direction's batch at a time, then let sends go straight out.

        A batch *send* raises for stays held, with what came after it, for the next ``start()``.
        """
        with self._lock:
            for direction in Direction:
                batch = [m for d, m in self._held if d is direction]
                if batch:
                    send(direction, batch)
                    self._held = [(d, m) for d, m in self._held if d is not direction]
            self._released = True

    def drop_all(self) -> None:
        """Count what is still held ``dropped``, as the local bus counts what it never handled."""
        with self._lock:
            if self._held:
                logger.warning(
                    "%d message(s) sent before a start() that never succeeded were not sent", len(self._held)
                )
            for direction, _ in self._held:
                self._metrics.accepted(f"messages_{direction.suffix}")
                self._metrics.finished(f"dropped_{direction.suffix}")
            self._held.clear()
