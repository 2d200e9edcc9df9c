"""Carrying out the outcome of each entry, in batches, on a thread of its own.

Workers (through the settler) and the reader hand entries to
:meth:`Acker.put` with their outcome and go on; the acker thread
(``nekobot-bus-redis-queue-acker``) sends what has gathered:

- :class:`~nekobot_bus.settle.Acknowledge`: one pipeline, ``SET`` of the
  message's "done" key first (with ``dedup_window``), then one ``XACK`` per
  stream. Redis answers how many entries it acknowledged; an entry it did
  not (the group or the stream is gone: ``XGROUP DESTROY``, ``FLUSHALL``, a
  failover to an empty replica) is counted ``ack_failed``, and the reader is
  told to create the group again, which delivers the entry again.
- :class:`~nekobot_bus.settle.DeadLetter`: ``MULTI``, ``XADD`` to the
  dead-letter stream, ``XACK``, ``EXEC``; counted ``dead_lettered`` only
  once ``EXEC`` ran both. An aborted transaction is tried again.
- :class:`~nekobot_bus.settle.Release`: nothing to send; the entry stays
  pending in Redis for the group to claim.

An entry whose outcome did not reach Redis stays pending there and is
claimed again later: at least once. Every entry leaves the
:class:`~.ledger.Ledger` here, last, so ``wait_idle()`` sees nothing held
only once Redis has its answer.
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
from ....errors import BusConnectionError, BusReplyError
from ....metrics import Metrics
from ....settle import Acknowledge, DeadLetter, Outcome, Release
from ..client import CommandRunner
from ..compat import error_code
from ..keyspace import Keyspace
from .ledger import Entry, Ledger

__all__ = ["Acker"]

logger = logging.getLogger("nekobot_bus.redis_streams")

_BATCH = 1024
_RETRY_PAUSE = 0.2  # seconds between attempts while Redis is away


class Acker:
    """The acker thread of one bus.

    :param group_lost: called (on the acker thread) when Redis did not know
        an entry acknowledged: the reader then checks its groups.
    """

    def __init__(
        self,
        runner: CommandRunner,
        keys: Keyspace,
        ledger: Ledger,
        metrics: Metrics,
        *,
        group: str,
        consumer: str,
        dedup_window: float,
        max_len: int,
        group_lost: Callable[[], None],
    ) -> None:
        self._runner = runner
        self._keys = keys
        self._ledger = ledger
        self._metrics = metrics
        self._group = group
        self.consumer = consumer
        self._dedup_window = dedup_window
        self._max_len = max_len
        self._group_lost = group_lost
        self._entries: queue.SimpleQueue[tuple[Entry, Outcome] | None] = queue.SimpleQueue()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        #: Notified each time entries leave the ledger, for waits on idleness.
        self.settled = threading.Condition()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nekobot-bus-redis-queue-acker", daemon=True)
        self._thread.start()

    def put(self, entry: Entry, outcome: Outcome) -> None:
        """Carry out *outcome* for *entry* soon; returns at once."""
        self._entries.put((entry, outcome))

    def stop(self, deadline: float) -> list[threading.Thread]:
        """Carry out what was put, until *deadline*; return the thread if still alive."""
        if self._thread is None:
            return []
        self._deadline = deadline
        self._entries.put(None)
        return join_all([self._thread], deadline)

    def _run(self) -> None:
        batch: list[tuple[Entry, Outcome]] = []
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
                batch = self._carry_out(batch)
                if batch and stopping and time.monotonic() >= self._deadline:
                    logger.warning("%d entries left unsettled at stop; they will be redelivered", len(batch))
                    self._done([entry for entry, _ in batch])
                    return
                if batch:
                    time.sleep(_RETRY_PAUSE)
            elif stopping:
                return

    def _carry_out(self, batch: list[tuple[Entry, Outcome]]) -> list[tuple[Entry, Outcome]]:
        """Send what *batch* asks for; return what is left to try again."""
        acks = [entry for entry, outcome in batch if isinstance(outcome, Acknowledge)]
        dead = [(entry, outcome) for entry, outcome in batch if isinstance(outcome, DeadLetter)]
        self._done([entry for entry, outcome in batch if isinstance(outcome, Release)])
        left: list[tuple[Entry, Outcome]] = []
        if acks and not self._acknowledge(acks):
            left += [(entry, Acknowledge()) for entry in acks]
        for entry, outcome in dead:
            if not self._dead_letter(entry, outcome.reason):
                left.append((entry, outcome))
        return left

    def _time_left(self) -> float | None:
        # Once stop() has set a deadline, no attempt may outlive it.
        return None if self._deadline == float("inf") else max(0.0, self._deadline - time.monotonic())

    def _acknowledge(self, batch: list[Entry]) -> bool:
        commands: list[tuple[Any, ...]] = []
        if self._dedup_window:
            ttl = max(1, int(self._dedup_window))
            commands += [
                ("SET", self._keys.done(self._group, e.done_id), 1, "EX", ttl) for e in batch if e.done_id
            ]
        by_stream: dict[str, list[Entry]] = defaultdict(list)
        for entry in batch:
            by_stream[entry.stream].append(entry)
        commands += [
            ("XACK", stream, self._group, *(e.entry_id for e in entries))
            for stream, entries in by_stream.items()
        ]
        try:
            replies = self._runner.run(
                commands, f"acknowledging {len(batch)} entries", timeout=self._time_left()
            )
        except BusConnectionError as exc:
            logger.warning("acknowledging failed (%s); retrying", exc)
            return False
        except BusReplyError as exc:
            logger.error("acknowledging failed (%s); the entries will be delivered again", exc)
            replies = [0] * len(commands)
        lost = False
        for (stream, entries), acked in zip(by_stream.items(), replies[-len(by_stream) :], strict=True):
            suffix = entries[0].direction.suffix
            self._metrics.incr(f"acked_{suffix}", int(acked))
            if int(acked) < len(entries):
                lost = True
                self._metrics.incr(f"ack_failed_{suffix}", len(entries) - int(acked))
                logger.warning(
                    "Redis acknowledged %d of %d entries of %s: group %r or the stream is gone; "
                    "creating it again, the entries will be delivered again",
                    int(acked),
                    len(entries),
                    stream,
                    self._group,
                )
        if lost:
            self._group_lost()
        self._done(batch)
        return True

    def _dead_letter(self, entry: Entry, reason: str) -> bool:
        name = self._keys.parse(entry.stream)
        channel_id = name.channel_id if name is not None else ""
        dead = self._keys.dead_letters(entry.direction, channel_id)
        fields = (
            "message", entry.payload, "error", reason, "deliveries", entry.deliveries, "stream", entry.stream,
            "entry_id", entry.entry_id, "group", self._group, "consumer", self.consumer,
        )  # fmt: skip
        commands = [
            ("MULTI",),
            ("XADD", dead, "MAXLEN", "~", self._max_len, "*", *fields),
            ("XACK", entry.stream, self._group, entry.entry_id),
            ("EXEC",),
        ]
        try:
            *_, result = self._runner.run(
                commands,
                "moving an entry to the dead-letter stream",
                timeout=self._time_left(),
                allow={"EXECABORT"},
            )
        except (BusConnectionError, BusReplyError) as exc:
            logger.warning("could not dead-letter %s of %s (%s); retrying", entry.entry_id, entry.stream, exc)
            return False
        if error_code(result) or not isinstance(result, list):
            logger.warning(
                "dead-lettering %s of %s was aborted (%s); retrying", entry.entry_id, entry.stream, result
            )
            return False
        self._metrics.incr(f"dead_lettered_{entry.direction.suffix}")
        logger.error("entry %s of %s moved to %s: %s", entry.entry_id.decode(), entry.stream, dead, reason)
        self._done([entry])
        return True

    def _done(self, entries: list[Entry]) -> None:
        if not entries:
            return
        for entry in entries:
            self._ledger.release(entry)
        with self.settled:
            self.settled.notify_all()
