"""Acknowledging stream entries in batches, on a thread of its own (the queue delivery).

Workers hand each handled entry to :meth:`Acker.put` and go on; the acker
thread sends what has gathered as one pipeline: ``SET`` of the message's
"done" key first (with ``dedup_window``), then one ``XACK`` per stream. An
entry whose acknowledgement did not reach Redis stays pending there and is
claimed again later: at least once. Only after Redis confirmed does the
acker count the entry ``acked`` and call the release callback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ...._threads import join_all
from ....dispatch import Direction
from ....errors import BusConnectionError
from ....metrics import Metrics
from ..client import CommandRunner

__all__ = ["Acker", "Entry"]

logger = logging.getLogger("nekobot_bus.redis_streams")

_BATCH = 1024


class Entry:
    """The ticket of one stream entry on its way through the workers."""

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


class Acker:
    """The acker thread of one bus.

    :param done_key: the Redis key that remembers a message id as handled.
    :param dedup_window: seconds those keys live; ``0``: none are written.
    :param release: called with each entry once Redis acknowledged it, or
        when it is given up at stop.
    """

    def __init__(
        self,
        runner: CommandRunner,
        group: str,
        metrics: Metrics,
        *,
        done_key: Callable[[str], str],
        dedup_window: float,
        release: Callable[[Entry], None],
    ) -> None:
        self._runner = runner
        self._group = group
        self._metrics = metrics
        self._done_key = done_key
        self._dedup_window = dedup_window
        self._release = release
        self._entries: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nekobot-bus-redis-queue-acker", daemon=True)
        self._thread.start()

    def put(self, entry: Entry) -> None:
        """Acknowledge *entry* soon; returns at once."""
        self._entries.put(entry)

    def stop(self, deadline: float) -> list[threading.Thread]:
        """Acknowledge what was put, until *deadline*; return the thread if still alive."""
        if self._thread is None:
            return []
        self._deadline = deadline
        self._entries.put(None)
        return join_all([self._thread], deadline)

    def _run(self) -> None:
        batch: list[Entry] = []
        stopping = False
        while True:
            if not stopping:
                try:
                    item = self._entries.get(timeout=0.05 if batch else 0.5)
                    while item is not None:
                        batch.append(item)
                        if len(batch) >= _BATCH:
                            break
                        item = self._entries.get_nowait()
                    stopping = item is None
                except queue.Empty:
                    pass
            if batch:
                if self._ack(batch):
                    batch = []
                elif stopping and time.monotonic() >= self._deadline:
                    logger.warning(
                        "%d entries left unacknowledged at stop; they will be redelivered", len(batch)
                    )
                    for entry in batch:
                        self._release(entry)
                    return
                else:
                    time.sleep(0.2)
            elif stopping:
                return

    def _ack(self, batch: list[Entry]) -> bool:
        commands: list[tuple[Any, ...]] = []
        if self._dedup_window:
            ttl = max(1, int(self._dedup_window))
            commands += [("SET", self._done_key(e.done_id), 1, "EX", ttl) for e in batch if e.done_id]
        by_stream: dict[str, list[bytes]] = defaultdict(list)
        for entry in batch:
            by_stream[entry.stream].append(entry.entry_id)
        commands += [("XACK", stream, self._group, *ids) for stream, ids in by_stream.items()]
        # Once stop() has set a deadline, no attempt may outlive it.
        left = None if self._deadline == float("inf") else max(0.0, self._deadline - time.monotonic())
        try:
            self._runner.run(commands, f"acknowledging {len(batch)} entries", timeout=left)
        except BusConnectionError as exc:
            logger.warning("acknowledging failed (%s); retrying", exc)
            return False
        for entry in batch:
            self._metrics.incr(f"acked_{entry.direction.suffix}")
            self._release(entry)  # last: wait_idle() waits for nothing held
        return True
