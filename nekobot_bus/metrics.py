"""Thread-safe counters and gauges whose snapshot adds up, and the wait for idleness.

A *counter* only grows (``handled_in``, ``errors``); a *gauge* is a level
that goes up and down (``queue_depth``, ``intake_bytes_in``, the queue
delivery's ``pending_in``).

Counting one message is the hot path of every send, so a counter takes no
lock: each is an :func:`itertools.count`, whose ``next()`` is one atomic
step under the interpreter lock (an uncontended lock costs about as much
as the rest of an inline send). Adding more than one at a time, and moving
a gauge, take the lock. A snapshot reads every count that *finishes* a
message before every count that *accepts* one: counters only grow, and a
message is accepted before it is finished, so what it reports always adds
up: messages taken in = handled + no_handler + dropped + ... + in flight,
with nothing in flight below zero. :meth:`Metrics.wait_idle` sleeps on a
condition that a finishing thread notifies only when somebody waits.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable

__all__ = ["DIRECTION_GAUGES", "DIRECTION_KEYS", "Metrics"]

#: Per-direction counters, written with an ``_in`` or ``_out`` suffix.
DIRECTION_KEYS = ("messages", "handled", "no_handler", "dropped", "claimed_elsewhere")
#: Per-direction gauges of every bus: the bytes a burst holds in the intake.
DIRECTION_GAUGES = ("intake_bytes",)
#: The counters that take a message in.
_ACCEPTING = ("messages_in", "messages_out")
#: The counters that finish one: a message is counted under one of these, once.
_FINISHING = tuple(f"{key}_{d}" for key in DIRECTION_KEYS[1:] for d in ("in", "out"))


def _value(counter: itertools.count[int]) -> int:
    """Where *counter* stands, without moving it (its repr is ``count(N)``)."""
    return int(repr(counter)[6:-1])


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
        self._counters = {key: itertools.count() for key in keys}
        self._bulk = dict.fromkeys(keys, 0)  # what arrived more than one at a time, under the lock
        levels = [f"{key}_{suffix}" for key in DIRECTION_GAUGES for suffix in ("in", "out")]
        self._levels = dict.fromkeys([*levels, *gauges], 0)
        #: The keys of :meth:`snapshot` that are gauges, not counters.
        self.gauge_names = frozenset([*self._levels, "queue_depth"])
        self._idle_waiters = 0
        self._followed: dict[str, Callable[[], int]] = {}

    def incr(self, key: str, amount: int = 1) -> None:
        """Add *amount* to counter *key*, which must exist."""
        if amount == 1:
            next(self._counters[key])
        else:
            with self._lock:
                self._bulk[key] += amount

    def move(self, gauge: str, delta: int) -> None:
        """Move *gauge*, which must exist, up or down by *delta*."""
        with self._lock:
            self._levels[gauge] += delta

    def follow(self, gauge: str, level: Callable[[], int]) -> None:
        """Report *gauge*, which must exist, as what *level* returns at each snapshot.

        For a level its owner keeps anyway, on a path too hot to tell this
        lock of every change (the intake's bytes, moved by every message).
        """
        if gauge not in self._levels:
            raise KeyError(gauge)
        self._followed[gauge] = level

    def accepted(self, key: str) -> None:
        """Count one message taken in under *key* (``messages_in`` or ``messages_out``)."""
        next(self._counters[key])

    def finished(self, key: str, amount: int = 1) -> None:
        """Count *amount* accepted messages as done, under *key*."""
        if amount == 1:  # incr(), spelled out: this is every message's path
            next(self._counters[key])
        else:
            with self._lock:
                self._bulk[key] += amount
        # Read after the count went up: a waiter counts itself in before it looks (wait_idle).
        if self._idle_waiters:
            with self._lock:
                self._idle.notify_all()

    def _counts(self) -> dict[str, int]:
        """Every counter, the ones that finish a message read before the ones that accept one (see
        the module); the caller holds the lock, so bulk counts hold still meanwhile."""
        counts = {k: _value(c) + self._bulk[k] for k, c in self._counters.items() if k not in _ACCEPTING}
        return counts | {k: _value(self._counters[k]) + self._bulk[k] for k in _ACCEPTING}

    @staticmethod
    def _in_flight(counts: dict[str, int]) -> int:
        return sum(counts[k] for k in _ACCEPTING) - sum(counts[k] for k in _FINISHING)

    def snapshot(self) -> dict[str, int]:
        """Return every counter and gauge, adding up as one instant's would."""
        with self._lock:
            counts = self._counts() | self._levels
        counts |= {gauge: level() for gauge, level in self._followed.items()}
        for key in ("no_handler", "dropped", "claimed_elsewhere"):
            counts[key] = counts[f"{key}_in"] + counts[f"{key}_out"]
        counts["queue_depth"] = self._in_flight(counts)
        return counts

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no accepted message is in flight; False if *timeout* passed first."""
        with self._lock:
            self._idle_waiters += 1
            try:
                return self._idle.wait_for(lambda: self._in_flight(self._counts()) <= 0, timeout)
            finally:
                self._idle_waiters -= 1
