"""The queue delivery's sending side: adding messages to their streams, in the caller's thread.

:meth:`StreamWriter.add` writes a batch in one round trip: ``XADD ...
MAXLEN ~ max_len`` to each message's stream (with ``shards``, its
session's shard stream), the streams written announced in the same
pipeline, and with ``min_replicas_ack`` a ``WAIT`` last, so that a returned
send is on that many replicas as well, or raises. It runs in the thread of
the sender, or of ``start()`` for what waited for Redis.

Before ``start()`` a send goes to its stream at once if Redis answers at
once, else it waits in the bus's :class:`~nekobot_bus.backends.start_hold.StartHold`
(:meth:`StreamWriter.add_before_start`).
"""

from __future__ import annotations

import threading
from typing import Any

from .... import codec
from ....dispatch import Direction
from ....errors import BusConnectionError
from ....message import Message
from ....metrics import Metrics
from ...start_hold import NothingSent, StartHold
from ..client import CommandRunner
from ..keyspace import Keyspace, shard_of
from ..options import QueueOptions
from ..topology import Server

__all__ = ["StreamWriter"]


class StreamWriter:
    """Adds the messages of one queue bus to their streams. Thread-safe (no state but the bus's hold)."""

    def __init__(
        self,
        *,
        keys: Keyspace,
        runner: CommandRunner,
        server: Server,
        options: QueueOptions,
        max_message_size: int,
        send_timeout: float | None,
        socket_timeout: float,
        metrics: Metrics,
        hold: StartHold,
        stopping: threading.Event,
    ) -> None:
        self._keys = keys
        self._runner = runner
        self._server = server
        self._shards = options.shards
        self._max_len = options.max_len
        self._min_replicas_ack = options.min_replicas_ack
        self._max_message_size = max_message_size
        self._send_timeout = send_timeout
        self._socket_timeout = socket_timeout
        self._metrics = metrics
        self._hold = hold
        self._stopping = stopping

    def add_before_start(self, direction: Direction, message: Message) -> bool:
        """Before ``start()``: add *message* now if Redis answers at once, else hold it for ``start()``.

        :returns: ``False`` if it was neither added nor held (``start()``
            released the hold meanwhile, or the bus stopped): it is then sent as usual.
        """
        # Into the stream now if Redis answers at once (another consumer may
        # take it), else held for start(), as the fan-out holds; behind
        # messages already held, so that a session keeps its order.
        unless = self._stopping.is_set
        if not self._hold.empty and self._hold.try_hold(direction, message, unless=unless):
            return True
        try:
            self.add(direction, [message], timeout=0.0)
            return True
        except NothingSent:
            codec.encode(message, max_size=self._max_message_size)  # one that never could be sent: refused
            return self._hold.try_hold(direction, message, unless=unless)

    def add(self, way: Direction, batch: list[Message], timeout: float | None = None) -> None:
        """Add *batch* to the streams of *way* in one round trip.

        :param timeout: how long to retry connecting, instead of the runner's own (``send_timeout``).
        :raises BusConnectionError: Redis was unreachable for the timeout (a
            :class:`~nekobot_bus.backends.start_hold.NothingSent`: nothing was
            stored), or the connection broke after the batch was written (then
            some messages may have been stored), or fewer replicas than
            ``min_replicas_ack`` confirmed them in time.
        """
        if not batch:
            return
        commands: list[tuple[Any, ...]] = []
        streams = set()
        for message in batch:
            shard = shard_of(message.session_id, self._shards) if self._shards else None
            stream = self._keys.messages(way, message.channel_id, shard)
            body = codec.encode(message, max_size=self._max_message_size)
            commands.append(("XADD", stream, "MAXLEN", "~", self._max_len, "*", "message", body))
            streams.add(stream)
        # Announced with every batch, in the same round trip: "*" consumers
        # find streams there, also after a restart that lost the set.
        commands.append(("SADD", self._keys.announced_streams, *streams))
        if self._min_replicas_ack:
            commands.append(("WAIT", self._min_replicas_ack, self._replica_wait_ms()))
        replies = self._runner.run(commands, f"adding {len(batch)} message(s)", timeout=timeout)
        self._metrics.incr(f"sent_{way.suffix}", len(batch))
        if self._min_replicas_ack and replies[-1] < self._min_replicas_ack:
            self._metrics.incr("replica_ack_timeouts")
            master = self._server.in_use() or self._server.address
            raise BusConnectionError(
                f"{len(batch)} message(s) are on the master at {master}, "
                f"but only {replies[-1]} of the {self._min_replicas_ack} replicas asked for "
                f"(min_replicas_ack) confirmed them within {self._replica_wait_ms() / 1000:g} s: a failover "
                "now could lose them"
            )

    def _replica_wait_ms(self) -> int:
        """How long ``WAIT`` may block: ``send_timeout``, within the socket's own timeout."""
        limit = self._send_timeout if self._send_timeout is not None else 30.0
        return max(1, int(min(limit, self._socket_timeout * 0.8) * 1000))
