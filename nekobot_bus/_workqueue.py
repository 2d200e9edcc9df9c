"""The queue of one worker thread, and the intake budget shared by a dispatcher's queues."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from .message import Message
from .metrics import Metrics

__all__ = ["HAND_OVER_SECONDS", "STOP", "Intake", "Item", "QueueClosed", "WorkQueue"]

T = TypeVar("T")

#: How long :meth:`WorkQueue.put` with ``hand_over`` waits for an idle worker to take an item.
HAND_OVER_SECONDS = 0.0002


class _Stop:
    def __repr__(self) -> str:
        return "<stop>"


#: The sentinel :meth:`WorkQueue.seal` appends: the worker ends when it gets it.
STOP: Final = _Stop()


class Item(Generic[T]):
    """A message on its way to a worker, with its transport's ticket and its intake bytes."""

    __slots__ = ("message", "size", "ticket")

    def __init__(self, message: Message, ticket: T, size: int = 0) -> None:
        self.message = message
        self.ticket = ticket
        self.size = size  # bytes held in the Intake until a worker takes it; 0: not counted there


class QueueClosed(Exception):
    """The queue was sealed: nothing more is taken."""


class Intake:
    """A budget in bytes for messages a reader hands over without waiting. Thread-safe.

    A remote transport's reader must never block (Redis would cut a slow
    subscriber), so a burst is held here, in memory, up to *limit* bytes of
    payload, instead of being dropped at the first full worker queue.
    """

    def __init__(self, limit: int, metrics: Metrics, gauge: str) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0
        metrics.follow(gauge, lambda: self._used)  # read at each snapshot: no lock per message

    def reserve(self, size: int) -> bool:
        """Take *size* bytes of the budget; ``False`` (nothing taken) when they do not fit."""
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
        return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size


class WorkQueue(Generic[T]):
    """A bounded FIFO that counts what it takes and can be sealed. Thread-safe.

    Items travel through a :class:`queue.SimpleQueue`, whose blocking ``get``
    is one lock hand-off in C: a worker wakes a few microseconds sooner than
    from ``queue.Queue``'s condition variables, which matters on every
    message. The bound, the seal and the ``accepted`` count live under one
    lock, so the closed check, the count and the enqueue happen atomically
    with respect to :meth:`seal`: nothing is accepted behind the sentinel.

    A woken worker still needs the interpreter lock, which the thread that
    put the item keeps for as long as it has Python work of its own: an
    event loop finishing its turn keeps it for tens of microseconds. A put
    with ``hand_over`` lets a worker that was waiting run first: it waits,
    at most :data:`HAND_OVER_SECONDS`, until the worker has taken an item,
    and then for the interpreter lock, which the worker keeps while its
    handlers run (until they wait for I/O, or for the interpreter's switch
    interval, 5 ms by default).

    :param on_take: called after a worker took an item, with the item.
    """

    def __init__(
        self,
        maxsize: int,
        metrics: Metrics,
        accepted_key: str,
        on_take: Callable[[Item[T]], None],
    ) -> None:
        self.maxsize = maxsize
        self._on_take = on_take
        self._metrics = metrics
        self._accepted_key = accepted_key
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._size = 0  # items queued, STOP not counted
        self._blocked = 0  # senders waiting for room
        self._closed = False
        # True while the worker is blocked in get(); written by the worker alone.
        self._worker_waiting = False
        # The hand-over in progress (under the lock): a lock its putter waits on, held until
        # the worker takes an item. One per hand-over, so a late release reaches nobody else.
        self._handover: threading.Lock | None = None
        #: Messages the worker keeps aside behind a retry (written by the worker only).
        self.held_back = 0

    def qsize(self) -> int:
        return self._size

    def put(
        self,
        item: Item[T],
        timeout: float | None = None,
        *,
        bounded: bool = True,
        hand_over: bool = False,
    ) -> None:
        """Queue *item*, waiting up to *timeout* seconds for room (``None``: forever, 0: not at all).

        :param bounded: ``False`` takes it past the bound (its bytes are in an :class:`Intake`).
        :param hand_over: when the worker was waiting for an item, wait until
            it took one, at most :data:`HAND_OVER_SECONDS` (see the class).
        :raises queue.Full: no room in time.
        :raises QueueClosed: the queue was sealed.
        """
        with self._lock:
            if self._closed:
                raise QueueClosed
            if bounded and self._size >= self.maxsize:
                if timeout is not None and timeout <= 0:
                    raise queue.Full
                self._blocked += 1
                try:
                    room = self._room.wait_for(lambda: self._size < self.maxsize or self._closed, timeout)
                finally:
                    self._blocked -= 1
                if self._closed:
                    raise QueueClosed
                if not room:
                    raise queue.Full
            self._size += 1
            self._metrics.accepted(self._accepted_key)
            self._items.put(item)
            waiter = None
            if hand_over and self._worker_waiting and self._handover is None:
                waiter = self._handover = threading.Lock()
                waiter.acquire()
        if waiter is not None:
            self._wait_taken(waiter)

    def _wait_taken(self, waiter: threading.Lock) -> None:
        if not waiter.acquire(timeout=HAND_OVER_SECONDS):
            with self._lock:
                if self._handover is waiter:  # not taken in time: the next hand-over may begin
                    self._handover = None

    def get(self, timeout: float | None = None) -> Item[T] | _Stop:
        """The next item (:data:`STOP` after :meth:`seal`).

        :raises queue.Empty: nothing came within *timeout* seconds.
        """
        self._worker_waiting = True
        try:
            item = self._items.get(timeout=timeout)
        finally:
            self._worker_waiting = False
        if item is not STOP:
            self._took(item)
        return item  # type: ignore[no-any-return]

    def get_nowait(self) -> Item[T] | _Stop:
        """The next item, or :class:`queue.Empty`."""
        item = self._items.get_nowait()
        if item is not STOP:
            self._took(item)
        return item  # type: ignore[no-any-return]

    def _took(self, item: Item[T]) -> None:
        with self._lock:
            self._size -= 1
            if self._blocked:
                self._room.notify()
            if self._handover is not None:
                self._handover.release()
                self._handover = None
        self._on_take(item)

    def seal(self) -> None:
        """Refuse all further puts and append the stop sentinel past the bound."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._items.put(STOP)
            self._room.notify_all()

    def wake_blocked_putters(self) -> None:
        """Let senders blocked on a full queue see that it is sealed."""
        with self._lock:
            self._room.notify_all()

    def take_all(self) -> list[Item[T]]:
        """Remove and return every item queued (used when no worker will run)."""
        items: list[Item[T]] = []
        while True:
            try:
                item = self.get_nowait()
            except queue.Empty:
                return items
            if not isinstance(item, _Stop):
                items.append(item)
