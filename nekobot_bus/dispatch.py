"""Handler registry and session-affine worker threads, shared by every backend.

A transport (the local send path, the Redis reader) hands each message to the
:class:`Dispatcher` of its direction and returns; worker threads call the
handlers. The message's journey, and where it is counted:

1. :meth:`Dispatcher.submit` puts it on the queue of the worker that owns its
   session (``hash(session_id) % workers``), so one session's messages are
   handled in the order they were submitted while sessions run in parallel.
   The queue is bounded: a full queue makes ``submit`` wait up to its
   timeout and then raise :class:`~nekobot_bus.BusFullError` (counted in
   ``send_timeouts``). Being taken by a queue is what counts the message in
   ``messages_in``/``messages_out``, atomically with the put.
2. The worker runs every handler of its channel and of ``"*"``, each in its
   own ``try``: a handler that raises is logged and counted in ``errors``,
   and the others still run. The message is then counted ``handled``, or
   ``no_handler`` if nobody listened.
3. On :meth:`Dispatcher.close` each queue is sealed: a stop sentinel goes in
   last, past the bound, and every later put raises
   :class:`~nekobot_bus.BusClosedError` under the same lock that guards the
   queue, so no message can slip in behind the sentinel. Without draining,
   the worker counts what is left as ``dropped``.

If the process dies, messages in the queues die with it: the local bus keeps
nothing outside memory.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final, cast

from ._threads import join_all
from .errors import BusClosedError, BusFullError
from .message import WILDCARD, Message, validate_channel_id
from .metrics import Metrics

__all__ = ["Direction", "Dispatcher", "Handler", "HandlerRegistry", "Settle"]

logger = logging.getLogger("nekobot_bus.dispatch")

#: A handler receives the message; what it returns is ignored, raising is a failure.
Handler = Callable[[Message], object]

#: Called on the worker after the handlers of a message ran, with the ticket
#: the transport gave it, whether its channel had any handler, and the
#: handlers that raised; see :class:`Dispatcher`.
Settle = Callable[[Message, object, bool, list[tuple[Handler, Exception]]], None]


class Direction(str, enum.Enum):
    """Which way a message travels: from a channel to the agent, or back."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"

    @property
    def suffix(self) -> str:
        """``"in"`` or ``"out"``, the suffix of this direction's counters."""
        return "in" if self is Direction.INBOUND else "out"

    def __str__(self) -> str:
        return self.value


class HandlerRegistry:
    """Which handlers listen on which channel, for one direction. Thread-safe.

    Writers copy and swap an immutable routing table under a lock; readers take
    the current table without locking, so a lookup on the hot path is one dict
    access and a registration never blocks a worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_channel: dict[str, tuple[Handler, ...]] = {}
        self._routes: dict[str, tuple[Handler, ...]] = {}
        self._wildcard: tuple[Handler, ...] = ()
        self._channels: frozenset[str] = frozenset()

    def add(self, channel_id: str, handler: Handler) -> None:
        """Add *handler* for *channel_id* (``"*"`` for every channel)."""
        validate_channel_id(channel_id, allow_wildcard=True)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        with self._lock:
            by_channel = dict(self._by_channel)
            by_channel[channel_id] = (*by_channel.get(channel_id, ()), handler)
            self._publish(by_channel)

    def remove_all(self, channel_id: str) -> int:
        """Remove every handler of *channel_id*; return how many there were."""
        validate_channel_id(channel_id, allow_wildcard=True)
        with self._lock:
            by_channel = dict(self._by_channel)
            removed = by_channel.pop(channel_id, ())
            self._publish(by_channel)
        return len(removed)

    def _publish(self, by_channel: dict[str, tuple[Handler, ...]]) -> None:
        wildcard = by_channel.get(WILDCARD, ())
        routes = {cid: handlers + wildcard for cid, handlers in by_channel.items() if cid != WILDCARD}
        # Readers may see the old or the new table, never a half-built one.
        self._by_channel, self._wildcard, self._routes = by_channel, wildcard, routes
        self._channels = frozenset(by_channel)

    def lookup(self, channel_id: str) -> tuple[Handler, ...]:
        """Return the handlers a message on *channel_id* goes to, in registration order."""
        return self._routes.get(channel_id, self._wildcard)

    def channels(self) -> frozenset[str]:
        """The channel ids (and ``"*"``) that have at least one handler."""
        return self._channels


class _Stop:
    def __repr__(self) -> str:
        return "<stop>"


_STOP: Final = _Stop()

# What a queue holds besides _STOP: the message and its transport's ticket.
_Item = tuple[Message, object]


class _QueueClosed(Exception):
    pass


class _WorkQueue:
    """A bounded FIFO that counts what it takes and can be sealed. Thread-safe.

    Items travel through a :class:`queue.SimpleQueue`, whose blocking ``get``
    is one lock hand-off in C: a worker wakes a few microseconds sooner than
    from ``queue.Queue``'s condition variables, which matters on every
    message. The bound, the seal and the ``accepted`` count live under one
    lock, so the closed check, the count and the enqueue happen atomically
    with respect to :meth:`seal`: nothing is accepted behind the sentinel.
    """

    def __init__(
        self, maxsize: int, metrics: Metrics, accepted_key: str, on_take: Callable[[], None] | None = None
    ) -> None:
        self.maxsize = maxsize
        self._on_take = on_take
        self._metrics = metrics
        self._accepted_key = accepted_key
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._size = 0  # items queued, _STOP not counted
        self._blocked = 0  # senders waiting for room
        self._closed = False

    def qsize(self) -> int:
        return self._size

    def put(self, item: object, timeout: float | None = None) -> None:
        """Queue *item*, waiting up to *timeout* seconds for room (``None``: forever, 0: not at all).

        :raises queue.Full: no room in time.
        :raises _QueueClosed: the queue was sealed.
        """
        with self._lock:
            if self._closed:
                raise _QueueClosed
            if self._size >= self.maxsize:
                if timeout is not None and timeout <= 0:
                    raise queue.Full
                self._blocked += 1
                try:
                    room = self._room.wait_for(lambda: self._size < self.maxsize or self._closed, timeout)
                finally:
                    self._blocked -= 1
                if self._closed:
                    raise _QueueClosed
                if not room:
                    raise queue.Full
            self._size += 1
            self._metrics.accepted(self._accepted_key)
            self._items.put(item)

    def put_nowait(self, item: object) -> None:
        self.put(item, 0)

    def get(self) -> object:
        """Wait for the next item (the sentinel after :meth:`seal`)."""
        item = self._items.get()
        if item is not _STOP:
            self._took_one()
        return item

    def get_nowait(self) -> object:
        """The next item, or :class:`queue.Empty`."""
        item = self._items.get_nowait()
        if item is not _STOP:
            self._took_one()
        return item

    def _took_one(self) -> None:
        with self._lock:
            self._size -= 1
            if self._blocked:
                self._room.notify()
        if self._on_take is not None:
            self._on_take()

    def seal(self) -> None:
        """Refuse all further puts and append the stop sentinel past the bound."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._items.put(_STOP)
            self._room.notify_all()

    def wake_blocked_putters(self) -> None:
        """Let senders blocked on a full queue see that it is sealed."""
        with self._lock:
            self._room.notify_all()

    def take_all(self) -> list[object]:
        """Remove and return everything queued (used when no worker will run)."""
        items = []
        while True:
            try:
                items.append(self.get_nowait())
            except queue.Empty:
                return items


class Dispatcher:
    """Calls the handlers of one direction, on worker threads or inline.

    Thread-safe: :meth:`submit` may be called from any number of threads;
    :meth:`start` and :meth:`stop` are called by the owning bus under its
    lifecycle lock.

    :param workers: worker threads, each owning one bounded queue.
    :param queue_size: bound of each worker's queue.
    :param inline: run handlers in the submitting thread; no worker threads.
        Messages submitted before :meth:`start` wait in one queue and are
        handled by :meth:`start`.
    :param thread_prefix: threads are named ``{thread_prefix}-{direction}-{n}``.
    :param settle: called after the handlers of each message ran (or found
        none), before it counts as finished, with the ticket the transport
        passed to :meth:`offer`: the Redis queue delivery acknowledges or
        retries there. A message that is dropped is never settled.
    """

    def __init__(
        self,
        direction: Direction,
        registry: HandlerRegistry,
        metrics: Metrics,
        *,
        workers: int,
        queue_size: int,
        inline: bool = False,
        thread_prefix: str = "nekobot-bus",
        settle: Settle | None = None,
    ) -> None:
        self.direction = direction
        self._settle = settle
        self._registry = registry
        self._metrics = metrics
        self._inline = inline
        suffix = direction.suffix
        self._accepted_key = f"messages_{suffix}"
        self._handled_key = f"handled_{suffix}"
        self._no_handler_key = f"no_handler_{suffix}"
        self._dropped_key = f"dropped_{suffix}"
        count = 1 if inline else workers
        # Signalled when a worker takes a message, for a transport waiting for room.
        self._room_freed = threading.Condition()
        self._room_waiters = 0
        self._queues = [
            _WorkQueue(queue_size, metrics, self._accepted_key, self._took_from_queue) for _ in range(count)
        ]
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(q,),
                name=f"{thread_prefix}-{direction.value}-{n}",
                daemon=True,  # a handler stuck forever must not hang interpreter exit
            )
            for n, q in enumerate(self._queues)
        ]
        self._live = False  # inline only: True once start() has handled the backlog
        self._start_lock = threading.RLock()
        self._discarding = False
        self._started = False

    # -- sending ----------------------------------------------------------

    def submit(self, message: Message, timeout: float | None) -> None:
        """Take *message* for handling.

        :param timeout: how long to wait for room in a full queue; ``None`` waits forever.
        :raises BusFullError: the queue stayed full for *timeout* seconds.
        :raises BusClosedError: the dispatcher was stopped.
        """
        if self._inline:
            self._submit_inline(message)
            return
        self._put(self._queue_for(message), (message, None), timeout)

    def _queue_for(self, message: Message) -> _WorkQueue:
        # The session's worker, always the same one: that keeps its order.
        queues = self._queues
        return queues[hash(message.session_id) % len(queues)] if len(queues) > 1 else queues[0]

    def offer(self, message: Message, ticket: object = None) -> bool:
        """Take *message* if its worker's queue has room, else count it ``dropped``.

        :returns: whether the message was taken.

        For transports that must never block (the Redis reader): a reader that
        waited would let the server's output buffer grow until it cuts the
        connection, losing far more than one message.
        """
        q = self._queue_for(message)
        try:
            q.put_nowait((message, ticket))
        except queue.Full:
            self._metrics.accepted(self._accepted_key)
            self._metrics.finished(self._dropped_key)
            logger.warning(
                "%s queue full (%d messages); message %r on channel %r dropped",
                self.direction,
                q.maxsize,
                message.id,
                message.channel_id,
            )
            return False
        except _QueueClosed:
            self._metrics.accepted(self._accepted_key)
            self._metrics.finished(self._dropped_key)
            return False
        return True

    def put_waiting(self, message: Message, ticket: object, timeout: float) -> bool:
        """Take *message* once its worker's queue has room, waiting up to *timeout* seconds.

        For transports that can hold a message back without losing it (the
        queue delivery's reader): a ``False`` is counted nowhere, the caller
        still owns the message. Also ``False`` once the dispatcher is stopped.
        """
        try:
            self._queue_for(message).put((message, ticket), timeout=timeout)
        except (queue.Full, _QueueClosed):
            return False
        return True

    def room(self) -> int:
        """How many more messages the queues can take now, all workers together."""
        return sum(q.maxsize - q.qsize() for q in self._queues)

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until :meth:`room` is above zero."""
        with self._room_freed:
            self._room_waiters += 1
            try:
                return self._room_freed.wait_for(lambda: self.room() > 0, timeout)
            finally:
                self._room_waiters -= 1

    def _took_from_queue(self) -> None:
        if self._room_waiters:  # an unlocked look: the hot path pays nothing when nobody waits
            with self._room_freed:
                self._room_freed.notify_all()

    def _put(self, q: _WorkQueue, item: _Item, timeout: float | None) -> None:
        message = item[0]
        try:
            q.put(item, timeout=timeout)
        except queue.Full:
            self._metrics.incr("send_timeouts")
            raise BusFullError(
                f"{self.direction} queue stayed full ({q.maxsize} messages) for {timeout} s; "
                f"message {message.id!r} was not sent"
            ) from None
        except _QueueClosed:
            raise BusClosedError(f"the bus is stopped; message {message.id!r} was not sent") from None

    def _submit_inline(self, message: Message) -> None:
        if not self._live:
            with self._start_lock:
                if not self._live:
                    # Nothing drains this queue before start(), so waiting would only
                    # stall the caller: a full backlog fails at once.
                    self._put(self._queues[0], (message, None), timeout=0)
                    return
        if self._discarding:
            raise BusClosedError(f"the bus is stopped; message {message.id!r} was not sent")
        self._metrics.accepted(self._accepted_key)
        self._deliver(message, None)

    # -- handling ---------------------------------------------------------

    def _deliver(self, message: Message, ticket: object) -> None:
        handlers = self._registry.lookup(message.channel_id)
        failures: list[tuple[Handler, Exception]] = []
        if handlers:
            failures = self.run_handlers(message, handlers)
        else:
            logger.debug(
                "no %s handler for channel %r; message %r counted",
                self.direction,
                message.channel_id,
                message.id,
            )
        if self._settle is not None:
            try:
                self._settle(message, ticket, bool(handlers), failures)
            except Exception:
                self._metrics.incr("errors")
                logger.exception("settling %s message %r failed", self.direction, message.id)
        self._metrics.finished(self._handled_key if handlers else self._no_handler_key)

    def run_handlers(
        self, message: Message, handlers: tuple[Handler, ...]
    ) -> list[tuple[Handler, Exception]]:
        """Call each of *handlers* in its own ``try``; return those that raised, with the error.

        Each failure is logged and counted in ``errors``.
        """
        failures: list[tuple[Handler, Exception]] = []
        for handler in handlers:
            try:
                handler(message)
            except Exception as exc:
                failures.append((handler, exc))
                self._metrics.incr("errors")
                logger.exception(
                    "%s handler %r failed on message %r (channel %r)",
                    self.direction,
                    handler,
                    message.id,
                    message.channel_id,
                )
        return failures

    def _work(self, q: _WorkQueue) -> None:
        # Blocks without a timeout on purpose: seal() always delivers the
        # sentinel, past the bound, so the worker is woken exactly when needed.
        get = q.get
        while True:
            item = get()
            if item is _STOP:
                return
            message, ticket = cast("_Item", item)
            if self._discarding:
                self._metrics.finished(self._dropped_key)
            else:
                self._deliver(message, ticket)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the workers, or (inline) handle the backlog in this thread."""
        if self._started:
            return
        self._started = True
        if not self._inline:
            for thread in self._threads:
                thread.start()
            return
        with self._start_lock:
            q = self._queues[0]
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                message, ticket = cast("_Item", item)
                self._deliver(message, ticket)
            self._live = True

    def stop(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """Seal the queues and join the workers by *deadline* (``time.monotonic``).

        :param drain: handle what is queued first; otherwise count it ``dropped``.
        :returns: worker threads still alive at the deadline (a handler that
            does not return); what they have left is counted ``dropped`` when
            they get to it.
        """
        if not drain:
            self._discarding = True
        for q in self._queues:
            q.seal()
        if self._inline or not self._started:
            self._discarding = True
            with self._start_lock:
                self._live = True  # later inline sends see _discarding and raise
            for q in self._queues:
                leftover = [item for item in q.take_all() if item is not _STOP]
                if leftover:
                    logger.warning(
                        "%d %s messages were never handled (bus not started)", len(leftover), self.direction
                    )
                    self._metrics.finished(self._dropped_key, len(leftover))
            if self._inline and drain:
                self._metrics.wait_idle(max(0.0, deadline - time.monotonic()))
            return []
        alive = join_all(self._threads, deadline)
        if alive:
            self._discarding = True
            logger.warning(
                "%s did not finish by the stop deadline; what they still hold is counted as dropped",
                ", ".join(t.name for t in alive),
            )
        for q in self._queues:
            q.wake_blocked_putters()
        return alive
