"""Ask and wait: the requests a bus awaits a reply to, keyed by the id of the message that asked.

:meth:`Bus.request <nekobot_bus.Bus.request>` opens a :class:`PendingRequest`
for the message, makes sure this bus sees the outbound messages of its
channel, sends it inbound and waits. Every outbound message that reaches this
bus is shown to :meth:`PendingRequests.offer` as it comes in, before its
handlers run: the first whose ``reply_to`` names a pending request answers
it. The reply then goes on to the outbound handlers like any other message;
a second reply to the same request is only that.

Each request ends once, counted under one name:

- ``request_replies``: its reply came;
- ``request_timeouts``: none came in time (:class:`~nekobot_bus.RequestTimeoutError`);
- ``request_failures``: its send raised, the bus stopped (every waiter is
  woken with :class:`~nekobot_bus.BusClosedError`), or (asyncio) the waiting
  task was cancelled.

So ``requests`` = those three + ``requests_pending`` (a gauge) whenever
no request is starting or ending. At most ``max_requests`` are pending at once; one more raises
:class:`~nekobot_bus.BusFullError` at once.

Thread-safe: requests open and end on any thread; replies are offered by the
bus's reader or sending threads. An unanswered request costs one dict entry,
freed when it ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import BusClosedError, BusFullError
from .message import Message
from .metrics import Metrics

__all__ = ["REQUEST_COUNTERS", "REQUEST_GAUGES", "PendingRequest", "PendingRequests"]

logger = logging.getLogger("nekobot_bus")

#: The counters every bus keeps for its requests.
REQUEST_COUNTERS = ("requests", "request_replies", "request_timeouts", "request_failures")
#: The gauge of the requests awaiting their reply.
REQUEST_GAUGES = ("requests_pending",)


class PendingRequest:
    """One request awaiting its reply: a result that is set once, by whoever ends it.

    :param on_done: called once with this request when it ends, on the thread
        that ends it (a reader's, for a reply): it must not block.
    """

    __slots__ = ("_done", "_error", "_on_done", "_reply", "message_id")

    def __init__(self, message_id: str, on_done: Callable[[PendingRequest], None] | None = None) -> None:
        self.message_id = message_id
        self._on_done = on_done
        self._done = threading.Event()
        self._reply: Message | None = None
        self._error: BaseException | None = None

    def wait(self, timeout: float | None) -> bool:
        """Wait until the request ended; ``False`` if *timeout* seconds passed first."""
        return self._done.wait(timeout)

    def result(self) -> Message:
        """The reply, once ended; or raise what ended it instead."""
        if self._error is not None:
            raise self._error
        if self._reply is None:
            raise RuntimeError(f"the request {self.message_id!r} has not ended")
        return self._reply

    def _end(self, reply: Message | None, error: BaseException | None) -> None:
        self._reply, self._error = reply, error
        self._done.set()
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception:  # the thread that ended it is a reader's or stop()'s: it goes on
                logger.exception("the callback of request %r failed", self.message_id)


class PendingRequests:
    """The requests of one bus that await a reply. Thread-safe.

    :param limit: how many may be pending at once.
    """

    def __init__(self, metrics: Metrics, limit: int) -> None:
        self._metrics = metrics
        self._limit = limit
        self._lock = threading.Lock()
        self._pending: dict[str, PendingRequest] = {}
        self._closed = False

    def open(
        self, message: Message, on_done: Callable[[PendingRequest], None] | None = None
    ) -> PendingRequest:
        """Await a reply to *message*; called before it is sent, so no reply can come first.

        :raises BusFullError: ``max_requests`` requests are pending already.
        :raises BusClosedError: the bus was stopped.
        :raises ValueError: a request of the same message id is pending.
        """
        pending = PendingRequest(message.id, on_done)
        with self._lock:
            if self._closed:
                raise BusClosedError(f"the bus is stopped; request {message.id!r} was not sent")
            if message.id in self._pending:
                raise ValueError(f"a request of message id {message.id!r} is pending already")
            if len(self._pending) >= self._limit:
                raise BusFullError(
                    f"{self._limit} requests await their reply already (bus.max_requests); "
                    f"request {message.id!r} was not sent"
                )
            self._pending[message.id] = pending
        self._metrics.incr("requests")
        self._metrics.move("requests_pending", 1)
        return pending

    @property
    def waiting(self) -> bool:
        """Whether any request awaits a reply: a reader may skip decoding when none does."""
        return bool(self._pending)

    def offer(self, message: Message) -> None:
        """An outbound message reached this bus: end the request it replies to, if one is pending.

        The hot path of every outbound message: without a pending request it
        costs one look at a dict, without the lock.
        """
        if not self._pending or not message.reply_to:
            return
        with self._lock:
            pending = self._pending.pop(message.reply_to, None)
        if pending is not None:
            self._ended(pending, "request_replies", message, None)

    def abandon(self, pending: PendingRequest, counter: str, error: BaseException) -> bool:
        """End *pending* with *error*, counted under *counter*; ``False`` if another thread is
        ending it (its reply came meanwhile): :meth:`PendingRequest.wait` for that, then take it."""
        with self._lock:
            if self._pending.get(pending.message_id) is not pending:
                return False
            del self._pending[pending.message_id]
        self._ended(pending, counter, None, error)
        return True

    def close(self) -> None:
        """The bus stops: wake every waiter with :class:`~nekobot_bus.BusClosedError`; open no more."""
        with self._lock:
            self._closed = True
            ended, self._pending = list(self._pending.values()), {}
        for pending in ended:
            error = BusClosedError(f"the bus was stopped before request {pending.message_id!r} was answered")
            self._ended(pending, "request_failures", None, error)

    def _ended(
        self, pending: PendingRequest, counter: str, reply: Message | None, error: BaseException | None
    ) -> None:
        # Counted before the waiter wakes: a caller that reads the metrics after its request sees it.
        self._metrics.incr(counter)
        self._metrics.move("requests_pending", -1)
        pending._end(reply, error)
