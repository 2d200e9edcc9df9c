"""What a fan-out bus sent to itself and has not read back yet, so that ``wait_idle`` can wait for it.

A fan-out bus that publishes to a channel it listens to will receive that
message from the server, after the publish returned or even before.
:class:`ReadBack` holds each such message's id from just before the publish
until one of these ends it, each counted once:

- the reader reads it back (the dispatcher then counts it);
- the server said nobody received it (the sender counted it ``unrouted``),
  or the publish failed (the sender raised);
- its channel was unsubscribed before it came (``no_handler``);
- the reader's connection broke, taking it along (``lost``);
- a marker published after it has come back and it has not (``lost``):
  for servers that do not say who received a message (a Redis Cluster),
  so that a message published while the reader was away is not awaited
  for ever.

Thread-safe: senders add, the reader thread removes, anyone waits.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from ..dispatch import Direction
from ..metrics import Metrics

__all__ = ["ReadBack"]

logger = logging.getLogger("nekobot_bus")


class _Awaited:
    __slots__ = ("channel", "direction", "published")

    def __init__(self, direction: Direction, channel: str) -> None:
        self.direction = direction
        self.channel = channel
        self.published: int | None = None  # the sequence number taken when its publish returned


class ReadBack:
    """The messages a bus awaits from its own reader, by id."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._awaited: dict[str, _Awaited] = {}
        self._cond = threading.Condition()
        self._sequence = itertools.count()

    def expect(self, messages: Mapping[str, tuple[Direction, str]]) -> None:
        """Await these (id to direction and channel): called before they are published."""
        if messages:
            with self._cond:
                self._awaited.update({i: _Awaited(d, c) for i, (d, c) in messages.items()})

    def published(self, ids: Iterable[str]) -> None:
        """Their publish returned: a marker taken from now on follows them."""
        with self._cond:
            for message_id in ids:
                entry = self._awaited.get(message_id)
                if entry is not None:
                    entry.published = next(self._sequence)

    def arrived(self, message_id: str) -> None:
        """The reader read *message_id*; most are not ours, and take no lock."""
        if message_id in self._awaited:
            self.forget([message_id])

    def forget(self, ids: Iterable[str]) -> None:
        """Stop awaiting *ids*: their sender counted or raised what became of them."""
        with self._cond:
            for message_id in ids:
                self._awaited.pop(message_id, None)
            if not self._awaited:
                self._cond.notify_all()

    def unsubscribed(self, still_covered: Callable[[Direction, str], bool]) -> None:
        """Count ``no_handler`` the awaited messages whose channel is no longer subscribed."""
        with self._cond:
            gone = [i for i, e in self._awaited.items() if not still_covered(e.direction, e.channel)]
            directions = [self._awaited.pop(i).direction for i in gone]
            if gone and not self._awaited:
                self._cond.notify_all()
        for direction in directions:
            self._metrics.accepted(f"messages_{direction.suffix}")
            self._metrics.finished(f"no_handler_{direction.suffix}")

    def lost_with_connection(self) -> None:
        """The reader's connection broke: count ``lost`` every message still awaited."""
        self._count_lost(lambda entry: True, "with the connection")

    def marker(self) -> int:
        """A sequence number to publish after the messages whose publish has returned."""
        with self._cond:
            return next(self._sequence)

    def marker_arrived(self, marker: int) -> None:
        """The marker came back: count ``lost`` the messages published before it that did not."""
        self._count_lost(
            lambda entry: entry.published is not None and entry.published < marker,
            "while the reader was not subscribed",
        )

    def _count_lost(self, which: Callable[[_Awaited], bool], how: str) -> None:
        with self._cond:
            gone = [i for i, entry in self._awaited.items() if which(entry)]
            for message_id in gone:
                del self._awaited[message_id]
            if not self._awaited:
                self._cond.notify_all()
        if gone:
            self._metrics.incr("lost", len(gone))
            logger.warning("%d message(s) this bus sent to itself were lost %s", len(gone), how)

    def clear(self) -> None:
        """The bus stopped: nothing more is awaited."""
        with self._cond:
            self._awaited.clear()
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait until nothing is awaited; ``False`` after *timeout* seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._awaited, timeout)
