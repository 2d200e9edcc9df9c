"""Waiting for the group, in the caller's thread: what ``wait_idle()`` and a draining ``stop()`` wait for.

:class:`GroupWait` runs in the thread that calls ``wait_idle()`` or
``stop()``. What the bus holds itself (messages in its workers, outcomes
its settler has yet to carry out) it waits for as those finish; how far
the group is, which covers what the other members hold, it asks the
server (:mod:`.group_state`, on the loop, within the time left), again
every :data:`_POLL` seconds until the answer is yes or the time is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from nats.js import JetStreamContext

from ...dispatch import Direction
from ...metrics import Metrics
from . import group_state
from .loop import LoopThread
from .puller import Puller
from .settle import JetStreamSettler

__all__ = ["GroupWait"]

#: How often wait_idle() and a draining stop() ask the server how far the group is.
_POLL = 0.05


class GroupWait:
    """Waits for the group on the consumers one :class:`~.queue.NatsQueueBus` reads. No state of its own.

    :param pullers: the bus's pullers, by direction and channel (the loop's; read here for their consumers).
    :param js: the bus's JetStream context of now; ``None`` before it connected.
    :param running: whether the bus runs.
    :param timeout: how long one question may take when there is no deadline (``send_timeout``).
    """

    def __init__(
        self,
        loop: LoopThread,
        metrics: Metrics,
        settling: JetStreamSettler,
        pullers: Mapping[tuple[Direction, str], Puller],
        *,
        js: Callable[[], JetStreamContext | None],
        running: Callable[[], bool],
        timeout: float,
    ) -> None:
        self._loop = loop
        self._metrics = metrics
        self._settling = settling
        self._pullers = pullers
        self._js = js
        self._running = running
        self._timeout = timeout

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until the group has taken and acknowledged everything in the channels read here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if (
                self._metrics.wait_idle(left)
                and self._settling.wait_empty(left if left is not None else 1e9)
                and self._group_idle(deadline)
                and self._metrics.wait_idle(0)
                and not len(self._settling)
            ):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def _group_idle(self, deadline: float | None) -> bool:
        js = self._js()
        if not self._running() or js is None:
            return True
        left = self._timeout if deadline is None else max(0.05, deadline - time.monotonic())
        try:
            return self._loop.call(group_state.idle(js, self._pullers.values()), left)
        except Exception:  # unknown now: not idle
            return False

    def caught_up(self, deadline: float) -> bool:
        """Wait until each consumer read here was given what it had pending when the stop began.

        Against a snapshot, not the live count, so traffic that goes on does
        not hold the stop; and for at most half the time left, so the workers
        keep time to finish what they were given.

        :returns: ``False`` if it was not (the drain failed).
        """
        until = time.monotonic() + (deadline - time.monotonic()) / 2
        js = self._js()
        assert js is not None  # set by the connect, which a drain follows
        try:
            targets = self._loop.call(
                group_state.delivery_targets(js, self._pullers.values()),
                max(0.05, until - time.monotonic()),
            )
        except Exception:  # the server is away: nothing more comes anyway
            return False
        while time.monotonic() < until:
            try:
                if self._loop.call(
                    group_state.delivered_past(js, targets), max(0.05, until - time.monotonic())
                ):
                    return True
            except Exception:
                break
            time.sleep(_POLL)
        return False
