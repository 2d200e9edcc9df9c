"""The entries this consumer holds: read from Redis, not yet acknowledged or given back.

Three threads share the :class:`Ledger`: the reader adds what it hands to
the workers, the acker removes what Redis acknowledged, the workers remove
what they give back; the reader also renews what has been held long (so a
slow handler is not taken for a dead consumer). One lock guards it, held
only for dictionary work, never across a round trip to Redis.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from ....dispatch import Direction
from ....metrics import Metrics

__all__ = ["Entry", "Ledger"]


class Entry:
    """The ticket of one stream entry on its way through the workers.

    :param deliveries: how often Redis has delivered it, this time included.
    """

    __slots__ = ("deliveries", "direction", "done_id", "entry_id", "payload", "stream")

    def __init__(
        self, stream: str, entry_id: bytes, direction: Direction, payload: bytes, deliveries: int
    ) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.direction = direction
        self.payload = payload  # kept for the dead-letter stream until settled
        self.deliveries = deliveries
        self.done_id = ""  # the message id to remember as handled, with dedup_window

    @property
    def key(self) -> tuple[str, bytes]:
        return self.stream, self.entry_id

    def __repr__(self) -> str:
        return f"<Entry {self.stream} {self.entry_id.decode()} delivery {self.deliveries}>"


class Ledger:
    """The entries held, with when each was taken or last renewed. Thread-safe.

    Moves the ``pending_in``/``pending_out`` gauges as entries come and go.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._since: dict[tuple[str, bytes], float] = {}
        self._directions: dict[tuple[str, bytes], Direction] = {}

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, key: tuple[str, bytes]) -> bool:
        with self._lock:
            return key in self._since

    def hold(self, entry: Entry) -> bool:
        """Note *entry* as held; ``False`` if it already was (a second delivery of one still in hand)."""
        with self._lock:
            if entry.key in self._since:
                return False
            self._since[entry.key] = time.monotonic()
            self._directions[entry.key] = entry.direction
        self._metrics.move(f"pending_{entry.direction.suffix}", 1)
        return True

    def release(self, entry: Entry) -> None:
        """*entry* is no longer held (acknowledged, dead-lettered or given back); idempotent."""
        with self._lock:
            if self._since.pop(entry.key, None) is None:
                return
            direction = self._directions.pop(entry.key)
        self._metrics.move(f"pending_{direction.suffix}", -1)

    def keys(self) -> set[tuple[str, bytes]]:
        with self._lock:
            return set(self._since)

    def holds_stream(self, stream: str) -> bool:
        with self._lock:
            return any(held == stream for held, _ in self._since)

    def due_for_renewal(self, age: float) -> dict[str, list[bytes]]:
        """The entries held *age* seconds since taken or renewed, by stream; now marked renewed."""
        now = time.monotonic()
        stale: dict[str, list[bytes]] = defaultdict(list)
        with self._lock:
            for (stream, entry_id), since in self._since.items():
                if now - since > age:
                    stale[stream].append(entry_id)
                    self._since[(stream, entry_id)] = now
        return stale
