"""What a worker does with each message: run the handlers, settle the outcome, keep retries aside.

:class:`Handling` is the half of :class:`~nekobot_bus.dispatch.Dispatcher`
that runs on the worker threads (and, inline, on the sender's); the other
half takes messages in and owns the lifecycle. Split by that seam so each
reads on its own; they share the attributes :class:`Handling` declares.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, TypeVar, cast

from ._aside import Aside, Parked
from ._workqueue import Item, WorkQueue
from .message import Message
from .metrics import Metrics
from .registry import Direction, Handler, HandlerRegistry
from .settle import Gate, Outcome, Release, Report, RetryAt, Settler

__all__ = ["Handling"]

logger = logging.getLogger("nekobot_bus.dispatch")

T = TypeVar("T")


class Handling(Generic[T]):
    """Runs handlers and settles messages for one direction; see :class:`~nekobot_bus.dispatch.Dispatcher`."""

    direction: Direction
    _registry: HandlerRegistry
    _metrics: Metrics
    _settler: Settler[T] | None
    _gate: Gate[T] | None
    _discarding: threading.Event
    _handled_key: str
    _no_handler_key: str
    _dropped_key: str
    _elsewhere_key: str

    def _deliver(self, item: Item[T], aside: Aside[T] | None, runs: int = 1) -> None:
        """Run the handlers of *item* and settle it; park it in *aside* when told to retry."""
        message = item.message
        handlers = self._registry.lookup(message.channel_id)
        if handlers and self._gate is not None and not self._admitted(item):
            return
        failures = self.run_handlers(message, handlers) if handlers else ()
        self._settle(item, aside, bool(handlers), failures, runs)

    def _admitted(self, item: Item[T]) -> bool:
        """Ask the gate; a message it turns away, or cannot answer for, is finished here."""
        assert self._gate is not None
        try:
            if self._gate.admit(item.message, item.ticket):
                return True
        except Exception as exc:
            self._metrics.incr("errors")
            self._drop(item, f"whether another process handles it is unknown: {exc}")
            return False
        self._metrics.finished(self._elsewhere_key)
        return False

    def _settle(
        self,
        item: Item[T],
        aside: Aside[T] | None,
        handled: bool,
        failures: tuple[tuple[Handler, Exception], ...],
        runs: int,
    ) -> None:
        message = item.message
        if self._settler is not None and aside is not None:
            outcome = self._decide(item, Report(handled, failures, runs))
            if isinstance(outcome, RetryAt):
                aside.park(Parked(item, tuple(h for h, _ in failures), runs, outcome.when))
                return
            self._carry_out(item, outcome)
        elif not handled:
            logger.debug(
                "no %s handler for channel %r; message %r counted",
                self.direction,
                message.channel_id,
                message.id,
            )
        self._metrics.finished(self._handled_key if handled else self._no_handler_key)

    def _decide(self, item: Item[T], report: Report) -> Outcome:
        assert self._settler is not None
        try:
            return self._settler.decide(item.message, item.ticket, report)
        except Exception as exc:
            self._metrics.incr("errors")
            logger.exception("deciding the outcome of %s message %r failed", self.direction, item.message.id)
            return Release(f"deciding its outcome failed: {exc!r}")

    def _carry_out(self, item: Item[T], outcome: Outcome) -> None:
        assert self._settler is not None
        try:
            self._settler.carry_out(item.message, item.ticket, outcome)
        except Exception:
            self._metrics.incr("errors")
            logger.exception("settling %s message %r failed", self.direction, item.message.id)

    def _drop(self, item: Item[T], why: str, level: int = logging.WARNING) -> None:
        """Count an accepted message ``dropped``; a settler releases it."""
        message = item.message
        logger.log(
            level,
            "%s message %r on channel %r dropped: %s",
            self.direction,
            message.id,
            message.channel_id,
            why,
        )
        if self._settler is not None:
            self._carry_out(item, Release(f"dropped: {why}"))
        self._metrics.finished(self._dropped_key)

    def run_handlers(
        self, message: Message, handlers: tuple[Handler, ...]
    ) -> tuple[tuple[Handler, Exception], ...]:
        """Call each of *handlers* in its own ``try``; return those that raised, with the error.

        Each failure is logged and counted in ``errors``.
        """
        failures: tuple[tuple[Handler, Exception], ...] = ()
        for handler in handlers:
            try:
                handler(message)
            except Exception as exc:
                failures = (*failures, (handler, exc))
                self._failed(message, handler, exc)
        return failures

    def _failed(self, message: Message, handler: Handler, exc: Exception) -> None:
        self._metrics.incr("errors")
        logger.error(
            "%s handler %r failed on message %r (channel %r)",
            self.direction,
            handler,
            message.id,
            message.channel_id,
            exc_info=exc,
        )

    def _work(self, q: WorkQueue[T]) -> None:
        # Without retries aside, blocks without a timeout on purpose: seal()
        # always delivers the sentinel, so the worker wakes exactly when needed.
        # The plain path (nothing aside, no settler) is spelled out: it runs
        # for every message, and each call saved is measurable.
        aside: Aside[T] = Aside()
        parked, due = aside.sessions, aside.due
        get, lookup, discarding = q.get, self._registry.lookup, self._discarding.is_set
        finished, handled_key, no_handler_key = (
            self._metrics.finished,
            self._handled_key,
            self._no_handler_key,
        )
        plain = self._settler is None and self._gate is None
        while True:
            try:
                item = get(aside.wait_time() if due else None)
            except queue.Empty:
                self._retry_due(q, aside)
                continue
            if not isinstance(item, Item):
                self._abandon(q, aside)
                return
            message = item.message
            if discarding():
                self._drop(item, "the bus stopped without draining", logging.DEBUG)
            elif parked and message.session_id in parked:
                aside.hold(item)
                q.held_back += 1
            elif plain:
                handlers = lookup(message.channel_id)
                if handlers:
                    for handler in handlers:
                        try:
                            handler(message)
                        except Exception as exc:
                            self._failed(message, handler, exc)
                    finished(handled_key)
                else:
                    finished(no_handler_key)
            else:
                self._deliver(item, aside)
            if due and aside.wait_time() == 0.0:
                self._retry_due(q, aside)

    def _abandon(self, q: WorkQueue[T], aside: Aside[T]) -> None:
        """At stop: what waits for a retry is dropped (a settler releases it for redelivery)."""
        for left in aside.take_all():
            self._drop(left, "it waited for a retry when the bus stopped", logging.INFO)
        q.held_back = 0

    def _retry_due(self, q: WorkQueue[T], aside: Aside[T]) -> None:
        """Run each retry whose time has come; then the messages its session held back, in order."""
        for parked in aside.pop_due():
            if self._discarding.is_set():  # stop(drain=False): no handler runs any more
                q.held_back -= len(parked.backlog)
                for item in (parked.item, *parked.backlog):
                    self._drop(item, "the bus stopped without draining", logging.DEBUG)
                continue
            runs = parked.runs + 1
            failures = self.run_handlers(parked.item.message, cast("tuple[Handler, ...]", parked.handlers))
            self._settle(parked.item, aside, True, failures, runs)
            session = parked.item.message.session_id
            backlog = parked.backlog
            while backlog and session not in aside.sessions:
                q.held_back -= 1
                self._deliver(backlog.popleft(), aside)
            if backlog:
                aside.hold_all(session, backlog)  # parked again: the rest waits behind it, in order
