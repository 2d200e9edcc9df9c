"""Session-affine worker threads that call the handlers, shared by every backend.

A transport (the local send path, a Redis reader) hands each message to the
:class:`Dispatcher` of its direction and returns; worker threads call the
handlers. The message's journey, and where it is counted:

1. It goes to the queue of the worker that owns its session
   (``hash(session_id) % workers``), so one session's messages are handled
   in the order they were given while sessions run in parallel. Being taken
   by a queue is what counts it in ``messages_in``/``messages_out``,
   atomically with the put. Three ways in:

   - :meth:`~Dispatcher.submit` (local sends) waits for room in the bounded
     queue up to its timeout, then raises :class:`~nekobot_bus.BusFullError`
     (counted ``send_timeouts``);
   - :meth:`~Dispatcher.offer` (a reader that must never block) takes it past
     the queue's bound while the dispatcher's intake budget, in bytes, has
     room: a burst waits in memory; only past the budget is a message
     counted ``dropped``;
   - :meth:`~Dispatcher.put_waiting` (a reader that can leave messages on its
     server) waits briefly and reports whether it was taken.

2. The worker runs every handler of its channel and of ``"*"``, each in its
   own ``try``: a handler that raises is logged and counted in ``errors``,
   and the others still run. With a :class:`~nekobot_bus.settle.Settler`, the
   transport then decides the outcome; a retry keeps the message and the
   rest of its session aside (:mod:`._aside`) while other sessions flow. The
   message is counted ``handled``, or ``no_handler`` if nobody listened.

3. On :meth:`~Dispatcher.stop` each queue is sealed: a stop sentinel goes in
   last, past the bound, and every later put raises
   :class:`~nekobot_bus.BusClosedError` under the same lock that guards the
   queue, so nothing slips in behind the sentinel. Without draining, and for
   what waits for a retry, the worker counts what is left ``dropped`` (and a
   settler releases it).

If the process dies, messages in the queues die with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._handling import Handling
from ._threads import join_all
from ._workqueue import Intake, Item, QueueClosed, WorkQueue
from .errors import BusClosedError, BusFullError
from .message import Message
from .metrics import Metrics
from .registry import Direction, Handler, HandlerRegistry
from .settle import Gate, Settler

__all__ = ["DEFAULT_INTAKE_BYTES", "Direction", "Dispatcher", "Handler", "HandlerRegistry"]

logger = logging.getLogger("nekobot_bus.dispatch")

#: Default intake budget of one direction: what a burst may hold in memory.
DEFAULT_INTAKE_BYTES = 64 * 1024 * 1024
#: What a message costs the intake besides its payload: the decoded object's memory, roughly.
MESSAGE_OVERHEAD = 512

T = TypeVar("T")

#: The ticket of a message sent in this process (local sends carry none).
_NO_TICKET: Any = None


class Dispatcher(Handling[T]):
    """Calls the handlers of one direction, on worker threads or inline.

    Taking messages in and the lifecycle are here; what a worker does with
    each message is :class:`~nekobot_bus._handling.Handling`.

    Thread-safe: messages may be given from any number of threads;
    :meth:`start` and :meth:`stop` are called by the owning bus under its
    lifecycle lock.

    :param workers: worker threads, each owning one bounded queue.
    :param queue_size: bound of each worker's queue.
    :param inline: run handlers in the submitting thread; no worker threads.
        Messages submitted before :meth:`start` wait in one queue and are
        handled by :meth:`start`.
    :param thread_prefix: threads are named ``{thread_prefix}-{direction}-{n}``.
    :param settler: decides and carries out what becomes of each message with
        a ticket (see :mod:`nekobot_bus.settle`); ``None``: handled is done.
    :param gate: asked before the handlers of a message run whether this
        process handles it (a group of processes sharing the work); a message
        it turns away is counted ``claimed_elsewhere``.
    :param intake_bytes: the budget of :meth:`offer`, in bytes.
    :param observe: shown each message once it was taken, before its handlers
        run (replies to requests, :mod:`nekobot_bus.requests`); must not block.
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
        settler: Settler[T] | None = None,
        gate: Gate[T] | None = None,
        intake_bytes: int = DEFAULT_INTAKE_BYTES,
        observe: Callable[[Message], None] | None = None,
    ) -> None:
        if inline and (settler is not None or gate is not None):
            raise ValueError("inline dispatch runs no settler or gate: they are for remote transports")
        self.direction = direction
        self._settler = settler
        self._gate = gate
        self._registry = registry
        self._metrics = metrics
        self._inline = inline
        self._observe = observe
        suffix = direction.suffix
        self._accepted_key = f"messages_{suffix}"
        self._handled_key = f"handled_{suffix}"
        self._no_handler_key = f"no_handler_{suffix}"
        self._dropped_key = f"dropped_{suffix}"
        self._elsewhere_key = f"claimed_elsewhere_{suffix}"
        self._intake = Intake(intake_bytes, metrics, f"intake_bytes_{suffix}")
        count = 1 if inline else workers
        # Signalled when a worker takes a message, for a transport waiting for room.
        self._room_freed = threading.Condition()
        self._room_waiters = 0
        self._queues: list[WorkQueue[T]] = [
            WorkQueue(queue_size, metrics, self._accepted_key, self._took) for _ in range(count)
        ]
        self._thread_prefix = thread_prefix
        # Made by start(), not here: a Thread object made before a fork (an app
        # built in gunicorn's --preload parent) cannot start in the child on 3.13.
        self._threads: list[threading.Thread] = []
        self._live = False  # inline only: True once start() has handled the backlog
        self._start_lock = threading.RLock()
        # Set by stop(): no handler runs any more; what is left is counted dropped.
        self._discarding = threading.Event()
        self._discarded = False  # the same, for the inline path to read without a call
        self._started = False

    # -- taking messages ----------------------------------------------------

    def submit(self, message: Message, timeout: float | None) -> None:
        """Take *message* for handling (a local send; no ticket).

        :param timeout: how long to wait for room in a full queue; ``None`` waits forever.
        :raises BusFullError: the queue stayed full for *timeout* seconds.
        :raises BusClosedError: the dispatcher was stopped.
        """
        if not self._inline:
            self._put(self._queue_for(message), Item(message, _NO_TICKET), timeout)
            if self._observe is not None:
                self._observe(message)
            return
        # Inline: the plain path, spelled out in one call (it is the latency claim).
        if not self._live and self._held_before_start(message):
            if self._observe is not None:
                self._observe(message)
            return
        if self._discarded:  # a plain attribute: Event.is_set() is a Python call
            raise BusClosedError(f"the bus is stopped; message {message.id!r} was not sent")
        # Counted in flight, then checked again: stop() discards before it
        # waits for nothing to be in flight, so a send either finishes before
        # stop() returns or sees it and runs no handler (a send that raced
        # stop() so is counted dropped as it raises).
        metrics = self._metrics
        metrics.accepted(self._accepted_key)
        if self._discarded:  # stop() may have set it meanwhile, which mypy cannot know
            metrics.finished(self._dropped_key)  # type: ignore[unreachable]
            raise BusClosedError(f"the bus is stopped; message {message.id!r} was not sent")
        if self._observe is not None:
            self._observe(message)
        handlers = self._registry.lookup(message.channel_id)
        if handlers:
            for handler in handlers:
                try:
                    handler(message)
                except Exception as exc:
                    self._failed(message, handler, exc)
            metrics.finished(self._handled_key)
        else:
            metrics.finished(self._no_handler_key)

    def _discard(self) -> None:
        self._discarded = True
        self._discarding.set()

    def _held_before_start(self, message: Message) -> bool:
        """Inline, before start(): keep *message* for start() to handle; ``False`` once started."""
        with self._start_lock:
            if self._live:
                return False
            # Nothing drains this queue before start(), so waiting would only
            # stall the caller: a full backlog fails at once.
            self._put(self._queues[0], Item(message, _NO_TICKET), timeout=0)
            return True

    def _queue_for(self, message: Message) -> WorkQueue[T]:
        # The session's worker, always the same one: that keeps its order.
        queues = self._queues
        return queues[hash(message.session_id) % len(queues)] if len(queues) > 1 else queues[0]

    def offer(self, message: Message, ticket: T, size: int, *, hand_over: bool = False) -> bool:
        """Take *message* without waiting while the intake budget has room, else count it ``dropped``.

        For transports that must never block (the Redis fan-out reader): a
        reader that waited would let the server's output buffer grow until it
        cuts the connection, losing far more than one message.

        :param size: the payload's bytes; the budget is charged that plus
            :data:`MESSAGE_OVERHEAD` until a worker takes the message.
        :param hand_over: for a reader with more Python work of its own after
            each message (an event loop): when the message's worker is idle,
            let it start before the reader goes on. The reader waits at most
            :data:`~nekobot_bus._workqueue.HAND_OVER_SECONDS` for the worker
            to take it, then for the interpreter lock, which the worker keeps
            while the handlers run (:class:`~nekobot_bus._workqueue.WorkQueue`).
        :returns: whether the message was taken.
        """
        item = Item(message, ticket, size + MESSAGE_OVERHEAD)
        if not self._intake.reserve(item.size):
            self._metrics.accepted(self._accepted_key)
            self._drop(item, f"the intake holds {self._intake.limit} bytes already")
            return False
        try:
            self._queue_for(message).put(item, bounded=False, hand_over=hand_over)
        except QueueClosed:
            self._intake.release(item.size)
            self._metrics.accepted(self._accepted_key)
            self._drop(item, "the bus is stopping")
            return False
        if self._observe is not None:
            self._observe(message)
        return True

    def put_waiting(self, message: Message, ticket: T, timeout: float) -> bool:
        """Take *message* once its worker's queue has room, waiting up to *timeout* seconds.

        For transports that can hold a message back without losing it (the
        queue delivery's reader): a ``False`` is counted nowhere, the caller
        still owns the message. Also ``False`` once the dispatcher is stopped.
        """
        try:
            self._queue_for(message).put(Item(message, ticket), timeout=timeout)
        except (queue.Full, QueueClosed):
            return False
        if self._observe is not None:
            self._observe(message)
        return True

    def room(self) -> int:
        """How many more messages the queues can take now, all workers together.

        Messages a worker keeps aside behind a retry take room too: a session
        that keeps failing cannot make its worker hold an unbounded backlog.
        """
        return sum(max(0, q.maxsize - q.qsize() - q.held_back) for q in self._queues)

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until :meth:`room` is above zero."""
        with self._room_freed:
            self._room_waiters += 1
            try:
                return self._room_freed.wait_for(lambda: self.room() > 0, timeout)
            finally:
                self._room_waiters -= 1

    def _took(self, item: Item[T]) -> None:
        if item.size:
            self._intake.release(item.size)
        if self._room_waiters:  # an unlocked look: the hot path pays nothing when nobody waits
            with self._room_freed:
                self._room_freed.notify_all()

    def _put(self, q: WorkQueue[T], item: Item[T], timeout: float | None) -> None:
        try:
            q.put(item, timeout=timeout)
        except queue.Full:
            self._metrics.incr("send_timeouts")
            raise BusFullError(
                f"{self.direction} queue stayed full ({q.maxsize} messages) for {timeout} s; "
                f"message {item.message.id!r} was not sent"
            ) from None
        except QueueClosed:
            raise BusClosedError(f"the bus is stopped; message {item.message.id!r} was not sent") from None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the workers, or (inline) handle the backlog in this thread."""
        if self._started:
            return
        self._started = True
        if not self._inline:
            self._threads = [
                threading.Thread(
                    target=self._work,
                    args=(q,),
                    name=f"{self._thread_prefix}-{self.direction.value}-{n}",
                    daemon=True,  # a handler stuck forever must not hang interpreter exit
                )
                for n, q in enumerate(self._queues)
            ]
            for thread in self._threads:
                thread.start()
            return
        with self._start_lock:
            # Until empty: a handler of the backlog may send more in this direction.
            while backlog := self._queues[0].take_all():
                for item in backlog:
                    self._deliver(item, None)
            self._live = True

    def stop(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """Seal the queues and join the workers by *deadline* (``time.monotonic``).

        :param drain: handle what is queued first; otherwise count it ``dropped``.
        :returns: worker threads still alive at the deadline (a handler that
            does not return); what they have left is counted ``dropped`` when
            they get to it. Inline, an empty list even if a sender's handler
            was still running at the deadline (it is not our thread).
        """
        if not drain:
            self._discard()
        for q in self._queues:
            q.seal()
        if self._inline or not self._started:
            self._discard()
            with self._start_lock:
                self._live = True  # later inline sends see _discarding and raise
            for q in self._queues:
                leftover = q.take_all()
                if leftover:
                    logger.warning(
                        "%d %s messages were never handled (bus not started)", len(leftover), self.direction
                    )
                    for item in leftover:
                        self._drop(item, "the bus never started", logging.DEBUG)
            if self._inline:
                # Inline handlers run in the senders' threads: wait for those running now.
                self._metrics.wait_idle(max(0.0, deadline - time.monotonic()))
            return []
        alive = join_all(self._threads, deadline)
        if alive:
            self._discard()
            logger.warning(
                "%s did not finish by the stop deadline; what they still hold is counted as dropped",
                ", ".join(t.name for t in alive),
            )
        for q in self._queues:
            q.wake_blocked_putters()
        return alive
