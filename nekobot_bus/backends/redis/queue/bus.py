"""Load-balanced delivery on Redis Streams: one member of a group handles each message, at least once.

Each direction and channel is a stream named like the fan-out channel,
``{prefix}inbound:{channel_id}``. Every bus that registers a handler for a
channel joins the stream's consumer group (``group``, created on first use
at the stream's start, so nothing sent before any consumer existed is
missed). Within a group each entry goes to one consumer; another group gets
every entry again, so an audit process can read along.

Threads and who owns them
-------------------------

``send_*`` runs in the caller's thread (:mod:`.writer`): ``XADD ... MAXLEN
~ max_len``, in one pipeline for :meth:`RedisStreamBus.send_many`, with the
same connect retry and :class:`~nekobot_bus.BusConnectionError` as the
fan-out. A returned send is stored in Redis (and on disk, with
``appendfsync always``).

The reader thread (``nekobot-bus-redis-queue-reader``, :mod:`.reader`) owns
one connection. It creates missing groups, reads new entries with
``XREADGROUP ... BLOCK``, decodes them and puts them on the session-affine
workers' queues; it never runs a handler. Every ``claim_idle / 4`` seconds
it re-claims the entries its workers still hold (so a slow handler is not
mistaken for a dead consumer) and takes over entries that other consumers
left idle for ``claim_idle`` seconds. A socket timeout of ``BLOCK`` plus
``health_check_timeout`` notices a paused server; any error closes the
connection and reconnects with capped, jittered backoff for as long as the
bus runs.

The workers run the handlers; the settle policy (:mod:`.settle`) decides
what becomes of the entry, and the acker thread
(``nekobot-bus-redis-queue-acker``, :mod:`.acker`) carries it out in
batches: acknowledge, or move to ``{prefix}dead:{direction}:{channel_id}``
and acknowledge in one transaction. A handler that raised is retried after a
backoff, until the entry has been delivered ``max_deliveries`` times; while
it waits, only its own session waits behind it. The entries in hand are
kept in the :mod:`.ledger`.

The reply reader (``nekobot-bus-redis-queue-replies``, :mod:`.replies`)
starts with the first ``request``: it reads the outbound streams of the
channels asked on without a group, for the replies, on a connection of its
own; it stops with the bus.

Where a message can be when something dies
------------------------------------------

* Not yet read, or read but not acknowledged: it stays in the stream, or in
  the group's pending list under this consumer. If this process dies, or its
  connection stays down, another consumer claims it after ``claim_idle`` and
  handles it again; with ``dedup_window`` set, an entry whose handling had
  finished (but whose acknowledgement was lost) is recognised by its message
  id and only acknowledged, counted in ``duplicates``.
* Dropped by a full worker queue, or abandoned by a stop in the middle of
  its retries: not acknowledged, so claimed again later.
* Trimmed: ``MAXLEN ~`` drops the oldest entries once a stream is longer
  than ``max_len``, read or not. An entry trimmed while pending is found by
  the claim and counted in ``trimmed``; one trimmed before any consumer read
  it is not seen by anybody: keep ``max_len`` well above the backlog.

Consumers: each bus joins under a new name and, on ``stop()``, leaves the
groups where it holds nothing (:mod:`.consumer`). Consumers that died
holding nothing are removed by the others after ``10 x claim_idle``; those
that held entries are removed once their entries were claimed.

Ordering: one consumer hands each session's messages to one worker, in
stream order, so a session whose messages all go to one consumer is handled
in order. Without ``shards``, consumers of a group share every stream, so
there is no order across them, and a retried or claimed message is handled
after the ones behind it. With ``shards`` each session lives in one shard
stream that one consumer at a time reads (:mod:`.shards`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from ...._threads import join_all
from ....dispatch import Direction
from ....errors import BusConnectionError
from ....settle import Settler
from ...start_hold import StartHold
from ..base import RedisBase
from ..cluster import ClusterRunner
from ..options import QueueOptions
from ..reader_link import ReaderLink
from ..subscriber import Subscriptions
from ..topology import ClusterNodes
from .acker import Acker
from .consumer import leave_group, process_consumer
from .ledger import Entry, Ledger
from .progress import GroupProgress
from .reader import BLOCK, StreamReader
from .replies import ReplyTail
from .settle import StreamSettler
from .writer import StreamWriter

__all__ = ["RedisStreamBus"]

logger = logging.getLogger("nekobot_bus.redis_streams")


class RedisStreamBus(RedisBase):
    """A bus whose messages wait in Redis Streams until one consumer of a group acknowledges them.

    Built by :func:`~nekobot_bus.create_bus` for ``bus.type: "redis"`` with
    ``bus.delivery: "queue"``. Thread-safe, as every :class:`~nekobot_bus.Bus`.
    On a running bus, ``register_*`` returns once the reader reads the
    channel's stream (its group created), or raises
    :class:`~nekobot_bus.BusConnectionError` after ``send_timeout``.

    Keyword arguments: see :class:`~nekobot_bus.backends.redis.RedisBase` and
    :class:`~.options.QueueOptions`:

    ``group`` (buses in one group share the work), ``consumer`` (this bus's
    name in it; default ``host-pid-random``), ``claim_idle`` (seconds an
    entry may stay unacknowledged by a consumer that does not renew it before
    another takes it over), ``max_deliveries`` (deliveries, claims included,
    before a failing entry is dead-lettered), ``retry_backoff`` (seconds
    before the first retry, doubled for each further one, up to 30 s),
    ``dedup_window`` (seconds a handled message id is remembered, so a
    redelivered copy is only acknowledged; ``0``: off), ``max_len``
    (approximate length each stream is trimmed to), ``shards`` (split each
    stream by session so that a session is handled in order across the
    group, see :mod:`.shards`; every process of a group must use the same
    number).
    """

    delivery = "queue"
    delivery_options = QueueOptions
    reader_name = "Redis queue reader"
    thread_name = "redis-queue"
    extra_metrics = (
        "sent_in",
        "sent_out",
        "decode_errors",
        "reconnects",
        "connection_errors",
        "trimmed",
        "replica_ack_timeouts",
        *(
            f"{key}_{suffix}"
            for key in ("acked", "ack_failed", "redelivered", "claimed", "dead_lettered", "duplicates")
            for suffix in ("in", "out")
        ),
    )
    extra_gauges = ("pending_in", "pending_out")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = StreamReader(
            keys=self.keys,
            runner=self._runner,
            options=self._delivery_options,
            consumer=self.consumer,
            max_message_size=self.max_message_size,
            registries=self._registries,
            dispatchers=self._dispatchers,
            ledger=self._ledger,
            acker=self._acker,
            metrics=self._metrics,
            stopping=self._stopping,
            subscriptions=self._subs,
        )
        self._reader_thread: threading.Thread | None = None
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        self._writer = StreamWriter(
            keys=self.keys,
            runner=self._runner,
            server=self.server,
            options=self._delivery_options,
            max_message_size=self.max_message_size,
            send_timeout=self.send_timeout,
            socket_timeout=self.connection.socket_timeout,
            metrics=self._metrics,
            hold=self._hold,
            stopping=self._stopping,
        )
        self._progress = GroupProgress(self._runner, self._streams, self.group, self._acker.settled)

    def _prepare_transport(self) -> None:
        super()._prepare_transport()
        if isinstance(self.server, ClusterNodes):
            # All of the bus's keys in one slot (its scripts and transactions span streams,
            # dedup keys and leases), read on a connection to that slot's primary.
            self.keys = self.keys.in_one_slot()
            self._link = self._new_link(self.reader_name)
        options: QueueOptions = self._delivery_options
        self.group = options.group
        self.consumer = options.consumer or process_consumer()
        self._consumer_named_in = os.getpid()
        self.claim_idle = options.claim_idle
        self.max_deliveries = options.max_deliveries
        self.retry_backoff = options.retry_backoff
        self.dedup_window = options.dedup_window
        self.max_len = options.max_len
        self.shards = options.shards
        self.min_replicas_ack = options.min_replicas_ack
        self._subs = Subscriptions(frozenset())
        self._ledger = Ledger(self._metrics)
        self._acker = Acker(
            self._runner,
            self.keys,
            self._ledger,
            self._metrics,
            group=self.group,
            consumer=self.consumer,
            dedup_window=self.dedup_window,
            max_len=self.max_len,
            group_lost=self._groups_lost,
        )
        self._stream_settler = StreamSettler(
            self._acker,
            self._metrics,
            max_deliveries=self.max_deliveries,
            retry_backoff=self.retry_backoff,
            dedup_window=self.dedup_window,
        )

        self._replies = ReplyTail(
            self._new_link("Redis reply reader"),
            self._runner,
            self.keys,
            stopping=self._stopping,
            shards=self.shards,
            max_message_size=self.max_message_size,
            requests=self._requests,
        )

    def _new_link(self, name: str) -> ReaderLink:
        """A supervised connection of its own, to the server (the slot's primary) the streams are on."""
        if isinstance(self.server, ClusterNodes):
            assert isinstance(self._runner, ClusterRunner)
            pool = self.server.slot_pool(self.keys.prefix, self._runner.slots, **self._reader_options)
        else:
            pool = self.server.pool(**self._reader_options)
        return ReaderLink(
            pool,
            address=self.address,
            name=name,
            metrics=self._metrics,
            stopping=self._stopping,
            reachability=self._reachability,
        )

    def _settler(self, direction: Direction) -> Settler[Entry]:
        return self._stream_settler

    def _groups_lost(self) -> None:
        self._streams.groups_lost()

    def _reader_socket_timeout(self) -> float:
        # Just past the blocking read's: a paused server is noticed.
        return BLOCK + self.connection.health_check_timeout

    def __repr__(self) -> str:
        return (
            f"<RedisStreamBus {self._state} {self.address} prefix={self.prefix!r} "
            f"group={self.group!r} consumer={self.consumer!r}>"
        )

    # -- names ------------------------------------------------------------

    def stream_name(self, direction: Direction, channel_id: str) -> str:
        """The stream of *channel_id* in *direction*, e.g. ``nekobot:bus:inbound:telegram``."""
        return self.keys.messages(direction, channel_id)

    def dead_letter_name(self, direction: Direction, channel_id: str) -> str:
        """Where entries of *channel_id* that failed ``max_deliveries`` times go."""
        return self.keys.dead_letters(direction, channel_id)

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        generation = self._subs.want(set())
        if self.running and threading.current_thread() is not self._reader_thread:
            # Wake the reader from its blocking read and wait until it reads the
            # new set of streams: after register_* returns this bus takes
            # entries of that stream; after unregister_* it takes no more.
            with contextlib.suppress(BusConnectionError):
                self._runner.run(
                    [("XADD", self._streams.wake_stream, "MAXLEN", 1, "*", "wake", 1)],
                    "waking the reader",
                    timeout=0.5,
                )
            timeout = self.send_timeout if self.send_timeout is not None else 30.0
            if not self._subs.wait(generation, timeout):
                raise BusConnectionError(
                    f"the reader did not take up the handler change within {timeout} s (Redis at "
                    f"{self.address} unreachable?); it does once it is connected again"
                )

    def _listen_for_replies(self, channel_id: str) -> None:
        """Read the channel's outbound streams without a group (replies.py): taking them in
        as a handler would take other processes' messages."""
        self._replies.watch(channel_id)
        if self.running:
            self._replies.start()

    # -- lifecycle --------------------------------------------------------

    def _start_transport(self) -> None:
        if self._consumer_named_in != os.getpid() and self._delivery_options.consumer is None:
            # Built before a fork (gunicorn --preload): each process is a consumer of its own.
            self.consumer = process_consumer()
            self._consumer_named_in = os.getpid()
            self._acker.consumer = self._streams.consumer = self.consumer
        # Fail fast, as the fan-out does, when Redis is not there at all.
        self._runner.run([("PING",)], "connecting")
        self._hold.release(self._writer.add)  # what waited for Redis, into its streams before reading them
        reader = threading.Thread(
            target=self._link.run,
            args=(self._streams.read,),
            name="nekobot-bus-redis-queue-reader",
            daemon=True,
        )
        self._reader_thread = reader
        generation = self._subs.want(set())
        self._link.starting = True
        reader.start()
        # Running means reading: the reader has made its groups and takes entries.
        timeout = self.send_timeout if self.send_timeout is not None else 30.0
        reading = self._subs.wait(generation, timeout)
        self._link.starting = False
        if not reading:
            why = self._link.last_error
            self._stopping.set()
            self._link.interrupt()
            reader.join(self._reader_socket_timeout() + self.connection.socket_connect_timeout + 1.0)
            if not reader.is_alive():
                self._stopping.clear()  # start() may be tried again
            raise BusConnectionError(
                f"the reader could not start on Redis at {self.address} within {timeout} s"
                + (f": {why}" if why else "")
            )
        self._acker.start()
        self._replies.start()

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        reading = self._reader_thread is not None and self._reader_thread.is_alive()
        # Take what the streams hold now, so what was sent before stop() is handled.
        if drain and reading and not self._progress.wait_caught_up(deadline):
            self._drain_failed = True
        self._stopping.set()
        self._subs.close()
        self._link.interrupt()
        self._hold.drop_all()
        alive = self._replies.stop(deadline)
        return alive + join_all([self._reader_thread] if self._reader_thread is not None else [], deadline)

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        alive = self._acker.stop(deadline)
        if not alive:
            leave_group(self._runner, self._streams, group=self.group, consumer=self.consumer)
        reader_alive = self._reader_thread is not None and self._reader_thread.is_alive()
        if not reader_alive:  # else the reader may still use them, and its workers their shards
            for leases in self._streams.leases.values():
                leases.release_all()
        self._runner.close()
        self._link.close()
        self._replies.close()
        return alive

    # -- sending ----------------------------------------------------------

    def _send(self, direction: Direction, message: Any) -> None:
        # Before start(): into the stream now, or held for start() (writer.py).
        if not self._hold.released and self._writer.add_before_start(direction, message):
            return
        self.send_many(direction, (message,))

    def send_many(self, direction: Direction | str, messages: Iterable[Any]) -> None:
        """Add *messages* to their streams in one round trip.

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises BusConnectionError: Redis was unreachable for ``send_timeout``
            seconds, or the connection broke after the batch was written (then
            some messages may have been stored).
        """
        self._writer.add(*self._batch(direction, messages))

    # -- observing --------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the group has taken and acknowledged everything in the streams this bus reads.

        That includes what other consumers of the group hold; a handler that
        sends keeps the group busy until its messages are handled too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def idle() -> bool:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Local, then Redis, then local again: an acknowledgement can reach
            # Redis a moment before its worker counts the message finished.
            return (
                self._metrics.wait_idle(left)
                and self._progress.idle()
                and self._metrics.wait_idle(0)
                and not len(self._ledger)
            )

        return self._progress.wait_until(idle, deadline)

    def health(self) -> dict[str, Any]:
        """Liveness of the reader: connected, since when, last entry age, this consumer's name."""
        since = self._link.connected_since
        last = self._streams.last_message_at
        return super().health() | {
            "connected": since is not None and self.running,
            "connected_since": since,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
            "address": self.address,
            "master": self.server.in_use(),
            "group": self.group,
            "consumer": self.consumer,
            "shards": sorted(self._streams.readable_shards()) if self.shards else None,
            "pid": os.getpid(),
        }
