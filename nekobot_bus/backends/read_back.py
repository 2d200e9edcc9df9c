"""What a fan-out bus sent to itself and has not read back yet, so that ``wait_idle`` can wait for it.

A fan-out bus that publishes to a channel it listens to will receive that
message from the server, after the publish returned or even before.
:class:`ReadBack` holds each such message's id from just before the publish
until one of these ends it, each counted once:

- the reader reads it back (the dispatcher then counts it);
- the server said nobody received it (the sender counted it ``unrouted``),
  or the publish failed (the sender raised);
- its channel was unsubscribed before it came (``no_handler``);
- a marker came back without it (``lost``), or the bus stopped without it.

A marker is a sequence number the bus publishes to its own reader's wake
channel once a subscription is confirmed (after a reconnect above all).
A message whose publish returned before the marker was taken had been
delivered, or not, before the server took the marker: if it has not come
by the time the marker does, it never will, and is counted ``lost``. This
needs no guess about which messages a broken connection took along: a
publish still in flight when a connection broke may well reach the next
one, and is judged by a later marker instead (:meth:`marker_arrived` says
when one is needed). On a cluster each reader holds its own channels, and
a marker judges only the messages of the channels its reader holds.

A reader takes a message in two steps, :meth:`arriving` before it hands the
message on and :meth:`arrived` after, so that ``wait_idle`` never sees a
gap. On a cluster another thread may count a channel's messages
``no_handler`` while a reader that gave that channel up is still handing
one on: :meth:`arriving` marks the message as taken, so it is not counted
twice, and tells the reader to drop one counted already. The ids counted
so are kept (the newest :data:`WRITTEN_OFF_KEPT`) to know a late one.

Thread-safe: senders add, reader threads remove, anyone waits.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping

from ..dispatch import Direction
from ..metrics import Metrics

__all__ = ["NextMarker", "ReadBack"]

logger = logging.getLogger("nekobot_bus")

#: How many ids counted ``no_handler`` before they came are kept, to drop them if they come late.
WRITTEN_OFF_KEPT = 65536


class NextMarker(enum.Enum):
    """When a reader should send its next marker."""

    NONE = "none"
    NOW = "now"
    AFTER_PUBLISH = "after the publish in flight returns"


class _Awaited:
    __slots__ = ("arriving", "channel", "direction", "expected", "published")

    def __init__(self, direction: Direction, channel: str, expected: int) -> None:
        self.direction = direction
        self.channel = channel
        self.expected = expected  # the sequence number taken before its publish was sent
        self.published: int | None = None  # the one taken when its publish returned
        self.arriving = False  # a reader is handing it on: it is counted there


class ReadBack:
    """The messages a bus awaits from its own reader, by id."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._awaited: dict[str, _Awaited] = {}
        self._written_off: OrderedDict[str, None] = OrderedDict()  # counted no_handler before they came
        # A plain lock for the hot paths (a Condition's own "with" is a Python call), and the
        # condition on it for wait(), notified only while somebody waits.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._sequence = itertools.count()
        self._closed = False  # stopped(): nothing will be read back any more

    def expect(self, messages: Mapping[str, tuple[Direction, str]]) -> None:
        """Await these (id to direction and channel): called before they are published."""
        if messages:
            with self._lock:
                now = next(self._sequence)
                self._awaited.update({i: _Awaited(d, c, now) for i, (d, c) in messages.items()})

    def published(self, ids: Collection[str]) -> None:
        """Their publish returned: a marker taken from now on judges them (after stopped(): lost)."""
        if not ids:  # most sends: nothing of them is awaited
            return
        with self._lock:
            now = next(self._sequence)
            for message_id in ids:
                entry = self._awaited.get(message_id)
                if entry is not None:
                    entry.published = now
            closed = self._closed
        if closed:
            self._count_lost(lambda entry: entry.published is not None)

    def arriving(self, message_id: str) -> bool:
        """A reader read *message_id* and is about to hand it on; ``False``: drop it, it was counted.

        Most are not ours, and take no lock: a sender adds an id before its
        publish, so one of ours is always visible here.
        """
        if message_id not in self._awaited and message_id not in self._written_off:
            return True
        with self._lock:
            if message_id in self._written_off:
                del self._written_off[message_id]
                return False
            entry = self._awaited.get(message_id)
            if entry is not None:
                entry.arriving = True
            return True

    def arrived(self, message_id: str) -> None:
        """The reader handed *message_id* on (the dispatcher counted it); most take no lock."""
        if message_id in self._awaited:
            with self._lock:
                self._awaited.pop(message_id, None)
                if not self._awaited and self._waiting:
                    self._cond.notify_all()

    def forget(self, ids: Iterable[str]) -> None:
        """Stop awaiting *ids*: their sender counted or raised what became of them."""
        with self._lock:
            for message_id in ids:
                self._awaited.pop(message_id, None)
            if not self._awaited and self._waiting:
                self._cond.notify_all()

    def unsubscribed(self, still_covered: Callable[[Direction, str], bool]) -> None:
        """Count ``no_handler`` the awaited messages whose channel is no longer subscribed."""
        with self._lock:
            gone = [
                i
                for i, e in self._awaited.items()
                if not e.arriving and not still_covered(e.direction, e.channel)
            ]
            self._written_off.update(dict.fromkeys(gone))  # first: arriving() looks there second, unlocked
            directions = [self._awaited.pop(i).direction for i in gone]
            while len(self._written_off) > WRITTEN_OFF_KEPT:
                self._written_off.popitem(last=False)
            if gone and not self._awaited and self._waiting:
                self._cond.notify_all()
        for direction in directions:
            self._metrics.accepted(f"messages_{direction.suffix}")
            self._metrics.finished(f"no_handler_{direction.suffix}")

    def marker(self) -> int:
        """A sequence number to publish to the reader, after a subscription was confirmed."""
        with self._lock:
            return next(self._sequence)

    def marker_arrived(self, marker: int, held: Callable[[str], bool] | None = None) -> NextMarker:
        """The marker came back: count ``lost`` the messages published before it that did not.

        :param held: the channels of the reader that read the marker; ``None``: all.
        :returns: when to send the next marker, for a message of those channels
            that was in flight when this one was taken and is still awaited:
            at once if its publish has returned since, else once it returns
            (never at once for a publish still in flight: markers would chase
            each other for as long as it takes).
        """

        def mine(entry: _Awaited) -> bool:
            return held is None or held(entry.channel)

        self._count_lost(lambda e: mine(e) and e.published is not None and e.published < marker)
        with self._lock:
            undecided = [e for e in self._awaited.values() if mine(e) and e.expected < marker]
        if any(e.published is not None for e in undecided):
            return NextMarker.NOW
        return NextMarker.AFTER_PUBLISH if undecided else NextMarker.NONE

    def stopped(self) -> None:
        """The bus stopped: what did not come is counted ``lost``; a publish still in flight is
        counted when it returns (unless its sender forgets it: it raised, or nobody listened)."""
        with self._lock:
            self._closed = True
        self._count_lost(lambda entry: entry.published is not None)

    def _count_lost(self, which: Callable[[_Awaited], bool]) -> None:
        with self._lock:
            gone = [i for i, entry in self._awaited.items() if not entry.arriving and which(entry)]
            for message_id in gone:
                del self._awaited[message_id]
            if not self._awaited and self._waiting:
                self._cond.notify_all()
        if gone:
            self._metrics.incr("lost", len(gone))
            logger.warning("%d message(s) this bus sent to itself never came back: lost", len(gone))

    def clear(self) -> None:
        """The bus stopped: nothing more is awaited (a transport that cannot tell what was lost)."""
        with self._lock:
            self._awaited.clear()
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait until nothing is awaited; ``False`` after *timeout* seconds."""
        with self._lock:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: not self._awaited, timeout)
            finally:
                self._waiting -= 1
