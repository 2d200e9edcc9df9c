"""The fan-out's reading side: what its reader threads do with each payload, and the read-back markers.

The reader threads (a :class:`~.subscriber.SingleReader`, or on a cluster
with sharded pub/sub a :class:`~.sharded.ShardedReader`'s thread per
primary) call :meth:`Receiver.receive` with each payload they read, and
:meth:`Receiver.confirmed` once Redis confirmed their subscriptions. A
payload on a channel of the bus's keyspace is decoded and offered to the
dispatcher of its direction, never waiting for a worker; one on the bus's
own wake channel is a marker of the read-back
(:mod:`~nekobot_bus.backends.read_back`) coming back, which tells which
messages the bus sent to itself never came (``lost``), and may call for
the next marker.

Markers are published by the reader threads (once a subscription is
confirmed, or at once when one that came back calls for another) and by
senders (:meth:`Receiver.send_due_markers`, when a marker waits for a
publish to return). Thread-safe as used so: several reader threads, and
any sender.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ... import codec
from ...dispatch import Direction, Dispatcher
from ...errors import BusConnectionError, MessageDecodeError
from ...metrics import Metrics
from ..read_back import NextMarker, ReadBack
from .client import CommandRunner
from .keyspace import Keyspace
from .sharded import ShardedReader
from .subscriber import SingleReader, covers

__all__ = ["Receiver"]

logger = logging.getLogger("nekobot_bus.redis")


class Receiver:
    """What a :class:`~.fanout.RedisBus`'s readers hand their payloads and confirmations to.

    :param wake_channel: the bus's own wake channel; a sharded reader's is
        ``{wake_channel}:{node}``.
    :param sharded: on a cluster with sharded pub/sub each reader sends the
        marker of its own share as it confirms it; else one marker follows
        each confirmation.
    :param readers: the bus's readers of now, to know which channels the
        reader of a wake channel holds.
    """

    def __init__(
        self,
        keys: Keyspace,
        runner: CommandRunner,
        read_back: ReadBack,
        dispatchers: Mapping[Direction, Dispatcher[Any]],
        metrics: Metrics,
        *,
        wake_channel: str,
        max_message_size: int,
        sharded: bool,
        readers: Callable[[], SingleReader | ShardedReader | None],
    ) -> None:
        self._keys = keys
        self._runner = runner
        self._read_back = read_back
        self._dispatchers = dispatchers
        self._metrics = metrics
        self._wake_channel = wake_channel
        self._max_message_size = max_message_size
        self._sharded = sharded
        self._readers = readers
        self._markers_due: set[str] = set()  # wake channels whose next marker waits for a publish
        #: When the last message was read (``time.time()``), for ``health()``; ``None``: none yet.
        self.last_message_at: float | None = None

    # -- reading (the reader threads) ----------------------------------------

    def receive(self, channel: str, payload: bytes) -> None:
        """Offer what was read on *channel* to the dispatcher of its direction, or take it as a marker."""
        if channel.startswith(self._wake_channel):  # ours, or a sharded reader's (wake_channel:node)
            if payload:
                self._marker_arrived(channel, int(payload))
            return
        name = self._keys.parse(channel)
        if name is None:
            return
        self.last_message_at = time.time()
        try:
            message = codec.decode(payload, max_size=self._max_message_size)
        except MessageDecodeError as exc:
            self._metrics.incr("decode_errors")
            logger.warning("undecodable payload on %s (%d bytes): %s", channel, len(payload), exc)
            return
        if not self._read_back.arriving(message.id):
            return  # a reader that gave its channel up, late: counted no_handler already (read_back.py)
        self._dispatchers[name.direction].offer(message, None, len(payload))
        self._read_back.arrived(message.id)

    def confirmed(self, subscribed: frozenset[str]) -> None:
        """Messages awaited on a channel no longer subscribed will not come: count them ``no_handler``;
        and a marker tells which of those published before this subscription did not come either
        (read_back.py; a sharded cluster's readers send theirs as each confirms its share)."""
        self._read_back.unsubscribed(lambda _direction, channel: covers(subscribed, channel))
        if not self._sharded:
            self.send_marker(self._wake_channel)

    # -- markers ----------------------------------------------------------------

    def send_marker(self, wake_channel: str) -> None:
        """Publish the read-back's next marker to *wake_channel* (best effort)."""
        marker = self._read_back.marker()
        with contextlib.suppress(BusConnectionError):  # then the next confirmation sends one
            self._runner.run([("PUBLISH", wake_channel, b"%d" % marker)], "publishing a marker", timeout=0.5)

    def send_due_markers(self) -> None:
        """In a sender whose publish returned: send the markers that waited for one (read_back.py)."""
        while self._markers_due:  # a marker found these in flight (read_back.py)
            with contextlib.suppress(KeyError):  # another sender took it
                self.send_marker(self._markers_due.pop())

    def _marker_arrived(self, wake_channel: str, marker: int) -> None:
        readers = self._readers()
        held = None
        if isinstance(readers, ShardedReader):
            held = readers.held_by(wake_channel)
            if held is None:  # a reader retired since: its channels are judged by their new readers' markers
                return
        follow = self._read_back.marker_arrived(marker, held)
        if follow is NextMarker.NOW:
            self.send_marker(wake_channel)
        elif follow is NextMarker.AFTER_PUBLISH:
            self._markers_due.add(wake_channel)  # sent by the sender whose publish returns next
