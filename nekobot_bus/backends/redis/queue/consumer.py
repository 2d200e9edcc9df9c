"""This process's consumer in a queue bus's group: its name, and its leaving at ``stop()``.

Unless ``consumer`` is configured, a bus names its consumer with
:func:`process_consumer` when it is built, and again at ``start()`` in a
process forked since (gunicorn ``--preload``), so that each process is a
consumer of its own; both run in the thread that builds or starts the bus.

:func:`leave_group` runs in the thread that calls ``stop()``, once the
acker stopped: the consumer leaves the groups where it holds nothing, so
that a group does not collect the names of processes long gone. Consumers
that died without leaving are removed by the others' readers
(:func:`.wire.forget_departed`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

from ....errors import BusConnectionError, BusReplyError
from ..client import CommandRunner
from .reader import StreamReader

__all__ = ["leave_group", "process_consumer"]


def process_consumer() -> str:
    """A consumer name of this process: host, process id and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def leave_group(runner: CommandRunner, reader: StreamReader, *, group: str, consumer: str) -> None:
    """Remove *consumer* from its groups, on the streams *reader* reads, where it holds nothing.

    Best effort: with Redis away, or refusing, it stays; the others remove it later.
    """
    with contextlib.suppress(BusConnectionError, BusReplyError):
        runner.run([("DEL", reader.wake_stream)], "leaving", timeout=1.0)
        streams = reader.streams_to_read(None, every_shard=True)
        replies = runner.run(
            [("XPENDING", s, group, "-", "+", 1, consumer) for s in streams],
            "leaving",
            timeout=1.0,
            allow={"NOGROUP"},
        )
        empty = [s for s, r in zip(streams, replies, strict=True) if r == []]
        if empty:
            runner.run(
                [("XGROUP", "DELCONSUMER", s, group, consumer) for s in empty],
                "leaving",
                timeout=1.0,
            )
