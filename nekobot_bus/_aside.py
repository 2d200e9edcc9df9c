"""Sessions a worker keeps aside while one of their messages waits for its retry.

Owned by one worker thread and touched by no other, so it takes no lock. A
session is aside from the moment a message of it is told to
:class:`~nekobot_bus.settle.RetryAt` until that message is settled: its
later messages wait behind it, in order, while the worker serves every
other session.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

from ._workqueue import Item

__all__ = ["Aside", "Parked"]

T = TypeVar("T")


class Parked(Generic[T]):
    """A message waiting for its retry, and the messages of its session behind it."""

    __slots__ = ("backlog", "handlers", "item", "runs", "when")

    def __init__(self, item: Item[T], handlers: tuple[object, ...], runs: int, when: float) -> None:
        self.item = item
        self.handlers = handlers  # the ones that failed: a retry runs only these
        self.runs = runs
        self.when = when
        self.backlog: deque[Item[T]] = deque()


class Aside(Generic[T]):
    """The parked sessions of one worker, by session id, with their retry times."""

    def __init__(self) -> None:
        #: The parked message of each session aside, by session id (read by the worker's hot path).
        self.sessions: dict[str, Parked[T]] = {}
        #: When each parked message is due, as a heap: empty when nothing is aside.
        self.due: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        """Messages kept aside: those waiting for a retry and those behind them."""
        return sum(1 + len(parked.backlog) for parked in self.sessions.values())

    def park(self, parked: Parked[T]) -> None:
        """Keep *parked* aside until its time."""
        session = parked.item.message.session_id
        self.sessions[session] = parked
        heapq.heappush(self.due, (parked.when, next(self._order), session))

    def hold(self, item: Item[T]) -> None:
        """Queue *item* behind the parked message of its session."""
        self.sessions[item.message.session_id].backlog.append(item)

    def hold_all(self, session_id: str, items: deque[Item[T]]) -> None:
        """Queue *items*, in order, behind the parked message of *session_id*."""
        self.sessions[session_id].backlog.extend(items)

    def wait_time(self) -> float | None:
        """Seconds until the next retry is due (0 if one is), ``None`` when nothing is aside."""
        if not self.due:
            return None
        return max(0.0, self.due[0][0] - time.monotonic())

    def pop_due(self) -> Iterator[Parked[T]]:
        """Take out, one by one, each parked message whose retry time has come."""
        while self.due and self.due[0][0] <= time.monotonic():
            _when, _order, session = heapq.heappop(self.due)
            yield self.sessions.pop(session)

    def take_all(self) -> list[Item[T]]:
        """Empty it; every message kept aside, each session's in order."""
        items: list[Item[T]] = []
        for parked in self.sessions.values():
            items.append(parked.item)
            items.extend(parked.backlog)
        self.sessions.clear()
        self.due.clear()
        return items
