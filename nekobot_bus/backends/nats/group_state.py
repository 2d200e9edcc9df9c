"""How far a group is, asked of JetStream: what ``wait_idle()`` and a draining ``stop()`` wait on.

Each question reads the consumers of the channels this bus reads
(``CONSUMER.INFO``, one round trip each), so it covers what the other
members of the group hold too.
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext

from .puller import Puller

__all__ = ["delivered_past", "delivery_targets", "idle"]


async def idle(js: JetStreamContext, pullers: Iterable[Puller]) -> bool:
    """Whether every consumer has delivered everything, and has nothing unacknowledged."""
    for puller in list(pullers):
        info = await js.consumer_info(puller.stream, puller.consumer)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def delivery_targets(js: JetStreamContext, pullers: Iterable[Puller]) -> dict[Puller, int]:
    """Per puller: its consumer's delivery count once what is pending now has gone out."""
    targets = {}
    for puller in list(pullers):
        info = await js.consumer_info(puller.stream, puller.consumer)
        targets[puller] = (info.delivered.consumer_seq or 0) + (info.num_pending or 0)
    return targets


async def delivered_past(js: JetStreamContext, targets: dict[Puller, int]) -> bool:
    """Whether each consumer reached its target, or has nothing pending any more."""
    for puller, target in targets.items():
        info = await js.consumer_info(puller.stream, puller.consumer)
        if (info.delivered.consumer_seq or 0) < target and info.num_pending:
            return False
    return True
