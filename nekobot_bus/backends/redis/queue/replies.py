"""The queue delivery's replies to requests: read from the outbound streams without taking them.

On the queue delivery an outbound message goes to one member of the group,
likely not the process that asked. So a bus that makes requests reads the
outbound streams of the channels it asked on as ``nekobot-bus tail`` does,
without a consumer group (``XREAD``): it takes nothing from the group, and
every reply it reads goes to :meth:`PendingRequests.offer
<nekobot_bus.requests.PendingRequests.offer>` alone; the group handles the
message as it would without a request.

:meth:`ReplyTail.watch` notes where each of the channel's streams ends
before it returns, so a reply, written after the request, is after that
point and read however late the thread gets to it. The thread (its
connection supervised by a :class:`~..reader_link.ReaderLink`) goes on from
the last entry it read after a reconnect: streams keep their entries, so an
outage delays a reply and loses none (unless ``max_len`` trimmed it first).
An entry that is not a message is passed over: the group counts it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .... import codec
from ...._threads import join_all
from ....dispatch import Direction
from ....errors import MessageDecodeError
from ....requests import PendingRequests
from ..client import CommandRunner
from ..keyspace import Keyspace
from ..reader_link import ReaderLink
from .wire import call, pairs

__all__ = ["ReplyTail"]

logger = logging.getLogger("nekobot_bus.redis_streams")

#: Seconds one ``XREAD`` waits; bounds how late the thread sees a new channel and a stop.
BLOCK = 0.25
_READ_COUNT = 256


class ReplyTail:
    """Reads the outbound streams of the watched channels and offers each message as a reply.

    :param link: the thread's supervised connection, which stops on *stopping*.
    :param shards: the queue's ``shards`` (``0``: one stream per channel).
    :param requests: what each message read is offered to, decoded only while one waits.
    """

    def __init__(
        self,
        link: ReaderLink,
        runner: CommandRunner,
        keys: Keyspace,
        *,
        stopping: threading.Event,
        shards: int,
        max_message_size: int,
        requests: PendingRequests,
    ) -> None:
        self._link = link
        self._stopping = stopping
        self._runner = runner
        self._keys = keys
        self._shards = shards
        self._max_message_size = max_message_size
        self._requests = requests
        self._lock = threading.Lock()
        self._positions: dict[str, Any] = {}  # stream -> the last entry id read (or seen at watch)
        self._thread: threading.Thread | None = None

    def _streams_of(self, channel_id: str) -> list[str]:
        if not self._shards:
            return [self._keys.messages(Direction.OUTBOUND, channel_id)]
        return [self._keys.messages(Direction.OUTBOUND, channel_id, s) for s in range(self._shards)]

    def watch(self, channel_id: str) -> None:
        """Read *channel_id*'s outbound streams from where they end now.

        :raises BusConnectionError: Redis did not say where they end within ``send_timeout``.
        """
        streams = self._streams_of(channel_id)
        replies = self._runner.run(
            [("XREVRANGE", s, "+", "-", "COUNT", 1) for s in streams], "finding where replies start"
        )
        with self._lock:
            for stream, last in zip(streams, replies, strict=True):
                self._positions.setdefault(stream, last[0][0] if last else b"0-0")

    def start(self) -> None:
        """Start the thread, once a channel is watched and the bus runs; again, nothing."""
        with self._lock:
            if self._thread is not None or not self._positions:
                return
            self._thread = threading.Thread(
                target=self._link.run, args=(self._read,), name="nekobot-bus-redis-queue-replies", daemon=True
            )
            self._thread.start()

    def stop(self, deadline: float) -> list[threading.Thread]:
        """Once *stopping* is set: unblock the read and join the thread by *deadline*."""
        self._link.interrupt()
        return join_all([self._thread] if self._thread is not None else [], deadline)

    def close(self) -> None:
        self._link.close()

    # -- the thread -------------------------------------------------------------

    def _read(self, conn: Any) -> None:
        while not self._stopping.is_set():
            with self._lock:
                positions = dict(self._positions)
            args = [*positions, *positions.values()]
            reply = call(conn, "XREAD", "COUNT", _READ_COUNT, "BLOCK", int(BLOCK * 1000), "STREAMS", *args)
            for stream_name, entries in reply or []:
                stream = stream_name.decode()
                for entry_id, fields in entries:
                    self._take(stream, fields)
                    with self._lock:
                        self._positions[stream] = entry_id

    def _take(self, stream: str, fields: Any) -> None:
        if not self._requests.waiting:
            return
        payload = pairs(fields).get(b"message", b"")
        try:
            message = codec.decode(payload, max_size=self._max_message_size)
        except MessageDecodeError as exc:  # the group's consumer counts it
            logger.debug("a reply candidate on %s is not a message: %s", stream, exc)
            return
        self._requests.offer(message)
