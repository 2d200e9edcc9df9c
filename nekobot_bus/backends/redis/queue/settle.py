"""The queue delivery's settle policy: when to acknowledge, retry, dead-letter or give back.

:class:`StreamSettler` is the :class:`~nekobot_bus.settle.Settler` of the
queue delivery's dispatchers. Deciding is policy only, on the worker
thread; carrying out hands the entry to the :class:`~.acker.Acker`, which
talks to Redis, so no worker waits for a round trip.

The policy: an entry whose handlers all returned is acknowledged. One whose
handler raised is retried after ``retry_backoff``, doubled for each further
retry up to 30 s, until it has been delivered ``max_deliveries`` times
(counting earlier deliveries to other consumers); then it goes to the
dead-letter stream. While it waits, only its own session waits behind it.
One that found no handler (it was unregistered in flight) is given back
unacknowledged for another consumer.
"""

from __future__ import annotations

import time

from ....message import Message
from ....metrics import Metrics
from ....settle import Acknowledge, DeadLetter, Outcome, Release, Report, RetryAt
from .acker import Acker
from .ledger import Entry

__all__ = ["MAX_RETRY_DELAY", "StreamSettler"]

#: The longest wait before a retry, in seconds.
MAX_RETRY_DELAY = 30.0


class StreamSettler:
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
        self.max_deliveries = max_deliveries
        self.retry_backoff = retry_backoff
        self.dedup_window = dedup_window

    def decide(self, message: Message, ticket: Entry, report: Report) -> Outcome:
        if not report.handled:
            return Release("no handler here any more")
        if not report.failures:
            return Acknowledge()
        delivery = ticket.deliveries + report.runs - 1
        if delivery < self.max_deliveries:
            self._metrics.incr(f"redelivered_{ticket.direction.suffix}")
            delay = min(self.retry_backoff * 2 ** (report.runs - 1), MAX_RETRY_DELAY)
            return RetryAt(time.monotonic() + delay)
        handler, error = report.failures[-1]
        return DeadLetter(f"{handler!r} raised {error!r} on delivery {delivery}")

    def carry_out(self, message: Message, ticket: Entry, outcome: Outcome) -> None:
        if isinstance(outcome, Acknowledge) and self.dedup_window:
            ticket.done_id = message.id
        self._acker.put(ticket, outcome)
