"""How far the group has got with the streams a queue bus reads: what wait_idle() and stop() wait on.

The group's state lives in Redis (``XINFO``): what other consumers do shows
no event here. So :class:`GroupProgress` checks, then waits on the acker's
progress with a pause that grows from 5 ms to 200 ms: no busy polling, and
a prompt answer when this bus's own work is what was missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ....errors import BusConnectionError, BusReplyError
from ..client import CommandRunner
from .reader import StreamReader
from .wire import pairs

__all__ = ["GroupProgress"]

logger = logging.getLogger("nekobot_bus.redis_streams")


class GroupProgress:
    """Reads the group's progress on the streams a bus reads. Thread-safe (no state of its own)."""

    def __init__(
        self, runner: CommandRunner, streams: StreamReader, group: str, settled: threading.Condition
    ) -> None:
        self._runner = runner
        self._streams = streams
        self._group = group
        self._settled = settled

    def state(self) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
        """For each stream read: its last entry id, the last id the group took, and its pending count."""
        commands: list[tuple[Any, ...]] = []
        for stream in self._streams.streams_to_read(None, every_shard=True):
            commands += [("XINFO", "STREAM", stream), ("XINFO", "GROUPS", stream)]
        replies = self._runner.run(commands, "reading the groups' state", allow={"ERR"}) if commands else []
        state = []
        for stream_info, groups in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(stream_info, Exception) or isinstance(groups, Exception):
                if "no such key" not in f"{stream_info} {groups}":
                    raise BusReplyError(
                        f"Redis at {self._runner.address} refused XINFO: {stream_info} {groups}"
                    )
                continue  # nothing was sent to it yet
            last = _id(pairs(stream_info)[b"last-generated-id"])
            mine = [g for g in map(pairs, groups) if g[b"name"] == self._group.encode()]
            if mine:
                state.append((last, _id(mine[0][b"last-delivered-id"]), int(mine[0][b"pending"])))
            else:
                state.append((last, (0, 0), 0))
        return state

    def idle(self) -> bool:
        """Whether the group has taken and acknowledged everything; ``False`` when Redis cannot say."""
        try:
            state = self.state()
        except (BusConnectionError, BusReplyError):
            return False
        return all(pending == 0 and delivered >= last for last, delivered, pending in state)

    def wait_until(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until *ready()* holds or *deadline* (``time.monotonic()``) passes."""
        pause = 0.005
        while True:
            if ready():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with self._settled:
                self._settled.wait(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.2)

    def wait_caught_up(self, deadline: float) -> bool:
        """Wait until the group has taken every entry the read streams hold now; ``False`` if it did not."""
        try:
            targets = [last for last, _, _ in self.state()]

            def caught_up() -> bool:
                taken = [delivered for _, delivered, _ in self.state()]
                done = all(d >= t for d, t in zip(taken, targets, strict=False))
                return len(taken) >= len(targets) and done

            return self.wait_until(caught_up, deadline)
        except (BusConnectionError, BusReplyError) as exc:
            logger.warning("could not drain the group at stop: %s", exc)
            return False


def _id(entry_id: bytes) -> tuple[int, int]:
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)
