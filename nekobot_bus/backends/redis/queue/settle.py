"""The queue delivery's settler: the shared :class:`~nekobot_bus.settle.RetryPolicy`, carried out.

:class:`StreamSettler` is the :class:`~nekobot_bus.settle.Settler` of the
queue delivery's dispatchers. Deciding is policy only, on the worker
thread (see :class:`~nekobot_bus.settle.RetryPolicy`: acknowledge, retry
with a doubling backoff, dead-letter after ``max_deliveries``, or give back
unacknowledged when no handler is here any more); carrying out hands the
entry to the :class:`~.acker.Acker`, which talks to Redis, so no worker
waits for a round trip. While a retry waits, only its own session waits
behind it.
"""

from __future__ import annotations

from ....message import Message
from ....metrics import Metrics
from ....settle import Acknowledge, Outcome, RetryPolicy, RetrySettler
from .acker import Acker
from .ledger import Entry

__all__ = ["StreamSettler"]


class StreamSettler(RetrySettler[Entry]):
    """Settles stream entries for one bus. Thread-safe (it keeps no state of its own)."""

    def __init__(
        self,
        acker: Acker,
        metrics: Metrics,
        *,
        max_deliveries: int,
        retry_backoff: float,
        dedup_window: float,
    ) -> None:
        self._acker = acker
        self._metrics = metrics
        self._policy = RetryPolicy(max_deliveries, retry_backoff)
        self.dedup_window = dedup_window

    def carry_out(self, message: Message, ticket: Entry, outcome: Outcome) -> None:
        if isinstance(outcome, Acknowledge) and self.dedup_window:
            ticket.done_id = message.id
        self._acker.put(ticket, outcome)
