"""Thread-safe counters and gauges with a consistent snapshot, and the wait for idleness.

A *counter* only grows (``handled_in``, ``errors``); a *gauge* is a level
that goes up and down (``queue_depth``, ``intake_bytes_in``, the queue
delivery's ``pending_in``). Both live in one dict guarded by one lock, so :meth:`Metrics.snapshot`
sees all of them at a single instant and the totals it reports add up. The
same lock backs a condition that :meth:`Metrics.wait_idle` sleeps on; it is
only notified when the number of messages in flight drops to zero while
somebody waits, so the hot path pays one uncontended lock per update.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["DIRECTION_GAUGES", "DIRECTION_KEYS", "Metrics"]

#: Per-direction counters, written with an ``_in`` or ``_out`` suffix.
DIRECTION_KEYS = ("messages", "handled", "no_handler", "dropped", "claimed_elsewhere")
#: Per-direction gauges of every bus: the bytes a burst holds in the intake.
DIRECTION_GAUGES = ("intake_bytes",)


class Metrics:
    """Named integer counters shared by the threads of one bus. Thread-safe.

    A message is *accepted* when a dispatcher queue (or an inline send) takes
    it, and *finished* when it has been handled, found no handler, or been
    dropped; accepted minus finished is the number in flight, reported as
    ``queue_depth``. Each finished message is counted under exactly one key.

    :param extra: backend-specific counters, which start at zero.
    :param gauges: backend-specific gauges, which start at zero.
    """

    def __init__(self, extra: Iterable[str] = (), gauges: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        keys = [f"{key}_{suffix}" for key in DIRECTION_KEYS for suffix in ("in", "out")]
        keys += ["errors", "send_timeouts", *extra]
        self._counts = dict.fromkeys(keys, 0)
        levels = [f"{key}_{suffix}" for key in DIRECTION_GAUGES for suffix in ("in", "out")]
        self._levels = dict.fromkeys([*levels, *gauges], 0)
        #: The keys of :meth:`snapshot` that are gauges, not counters.
        self.gauge_names = frozenset([*self._levels, "queue_depth"])
        self._in_flight = 0
        self._idle_waiters = 0

    def incr(self, key: str, amount: int = 1) -> None:
        """Add *amount* to counter *key*, which must exist."""
        with self._lock:
            self._counts[key] += amount

    def move(self, gauge: str, delta: int) -> None:
        """Move *gauge*, which must exist, up or down by *delta*."""
        with self._lock:
            self._levels[gauge] += delta

    def accepted(self, key: str) -> None:
        """Count one message taken in under *key* (``messages_in`` or ``messages_out``)."""
        with self._lock:
            self._counts[key] += 1
            self._in_flight += 1

    def finished(self, key: str, amount: int = 1) -> None:
        """Count *amount* accepted messages as done, under *key*."""
        with self._lock:
            self._counts[key] += amount
            self._in_flight -= amount
            if self._in_flight == 0 and self._idle_waiters:
                self._idle.notify_all()

    def snapshot(self) -> dict[str, int]:
        """Return every counter and gauge at one instant, with the totals over both directions."""
        with self._lock:
            counts = self._counts | self._levels
            in_flight = self._in_flight
        for key in ("no_handler", "dropped", "claimed_elsewhere"):
            counts[key] = counts[f"{key}_in"] + counts[f"{key}_out"]
        counts["queue_depth"] = in_flight
        return counts

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no accepted message is in flight; False if *timeout* passed first."""
        with self._lock:
            self._idle_waiters += 1
            try:
                return self._idle.wait_for(lambda: not self._in_flight, timeout)
            finally:
                self._idle_waiters -= 1
