"""What becomes of a message once its handlers ran: the outcomes a transport carries out.

A transport that must confirm messages (the Redis queue delivery
acknowledges stream entries) hands the :class:`~nekobot_bus.dispatch.Dispatcher`
a typed *ticket* with each message and a :class:`Settler` for its tickets.
After the handlers ran, the dispatcher asks the settler to
:meth:`~Settler.decide` and gets one of four outcomes:

- :class:`Acknowledge`: done; the transport confirms it.
- :class:`RetryAt`: run the handlers that failed again at a ``time.monotonic()``
  instant. The dispatcher keeps the message (and the later messages of its
  session, in order) aside until then; other sessions flow on. Then it asks
  again.
- :class:`DeadLetter`: failed for good; the transport files it with the reason.
- :class:`Release`: not this process's to finish (no handler here, or given
  up at stop): the transport leaves it for another consumer.

The dispatcher hands every outcome but :class:`RetryAt` to
:meth:`Settler.carry_out`, which must not block: the queue delivery passes
it to its acker thread. Deciding is pure policy; nothing in this module
touches a network.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import attrs

from .message import Message

if TYPE_CHECKING:
    from .dispatch import Handler
    from .metrics import Metrics
    from .registry import Direction

__all__ = [
    "MAX_RETRY_DELAY",
    "Acknowledge",
    "DeadLetter",
    "Gate",
    "Outcome",
    "Release",
    "Report",
    "RetryAt",
    "RetryPolicy",
    "RetrySettler",
    "Settler",
]

#: The longest wait before a retry, in seconds.
MAX_RETRY_DELAY = 30.0

T_contra = TypeVar("T_contra", contravariant=True)


@attrs.frozen
class Report:
    """What the handlers of one message did, on its latest run here.

    :param handled: whether its channel had a handler at all.
    :param failures: the handlers that raised, with their errors (those are
        the ones a retry runs again).
    :param runs: how many times handlers ran for it in this process, this one included.
    """

    handled: bool
    failures: tuple[tuple[Handler, Exception], ...] = ()
    runs: int = 1


@attrs.frozen
class Acknowledge:
    """Every handler returned: confirm the message."""


@attrs.frozen
class RetryAt:
    """Run the failed handlers again at :func:`time.monotonic` instant *when*."""

    when: float


@attrs.frozen
class DeadLetter:
    """Give the message up for good and file it, with *reason*."""

    reason: str


@attrs.frozen
class Release:
    """Leave the message unconfirmed, for another consumer (or a later delivery) to take."""

    reason: str


Outcome = Acknowledge | RetryAt | DeadLetter | Release


@attrs.frozen
class RetryPolicy:
    """The at-least-once deliveries' policy (Redis Streams, JetStream), one rule for both.

    A message whose handlers all returned is acknowledged. One whose handler
    raised is retried after *retry_backoff*, doubled for each further retry
    up to :data:`MAX_RETRY_DELAY`, until it has been delivered
    *max_deliveries* times (counting earlier deliveries to other consumers);
    then it is dead-lettered. One that found no handler (unregistered in
    flight) is released for another consumer.
    """

    max_deliveries: int
    retry_backoff: float

    def decide(self, report: Report, deliveries: int) -> Outcome:
        """The outcome of a message the server had delivered *deliveries* times when it came here."""
        if not report.handled:
            return Release("no handler here any more")
        if not report.failures:
            return Acknowledge()
        delivery = deliveries + report.runs - 1
        if delivery < self.max_deliveries:
            delay = min(self.retry_backoff * 2 ** (report.runs - 1), MAX_RETRY_DELAY)
            return RetryAt(time.monotonic() + delay)
        handler, error = report.failures[-1]
        return DeadLetter(f"{handler!r} raised {error!r} on delivery {delivery}")


class Settler(Protocol[T_contra]):
    """Decides and carries out the outcome of each message with a ticket of type ``T``.

    Called on worker threads, concurrently: implementations are thread-safe.
    """

    def decide(self, message: Message, ticket: T_contra, report: Report) -> Outcome:
        """The outcome of *message* after the run *report* describes."""

    def carry_out(self, message: Message, ticket: T_contra, outcome: Outcome) -> None:
        """Confirm, file or release *message*; never :class:`RetryAt`. Must not block."""


class Gate(Protocol[T_contra]):
    """Decides, before the handlers run, whether this process handles a message at all.

    The Redis fan-out's ``group`` uses one: of the processes of a group that
    all receive a message, only the first to claim its id handles it. Called
    on worker threads, concurrently, only for messages that have a handler
    here: implementations are thread-safe.
    """

    def admit(self, message: Message, ticket: T_contra) -> bool:
        """``True``: handle it here; ``False``: another member of the group does.

        :raises Exception: the question could not be answered (its server is
            away): the message is counted ``dropped``.
        """


class Delivered(Protocol):
    """A ticket that knows its direction and how often its server had delivered it."""

    @property
    def direction(self) -> Direction: ...

    @property
    def deliveries(self) -> int: ...


D = TypeVar("D", bound=Delivered)


class RetrySettler(Generic[D]):
    """The ``decide`` of every at-least-once delivery: its :class:`RetryPolicy`, each retry
    counted ``redelivered_*``. A subclass sets ``_policy`` and ``_metrics`` and carries out."""

    _policy: RetryPolicy
    _metrics: Metrics

    def decide(self, message: Message, ticket: D, report: Report) -> Outcome:
        outcome = self._policy.decide(report, ticket.deliveries)
        if isinstance(outcome, RetryAt):
            self._metrics.incr(f"redelivered_{ticket.direction.suffix}")
        return outcome
