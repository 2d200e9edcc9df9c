"""The fan-out's reader: which channels to subscribe, the read loop on one connection, and its thread.

:class:`Subscriptions` is shared: registering threads say what they want
(:meth:`Subscriptions.want`) and wait for it (:meth:`Subscriptions.wait`);
the reader thread alone talks to Redis and confirms a generation once Redis
answered every SUBSCRIBE and UNSUBSCRIBE it sent for it. After an
unsubscribe reply Redis sends nothing more of that channel, so a message
still awaited on it is known not to come.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..._threads import join_all
from ...errors import BusClosedError
from .compat import read_reply
from .reader_link import ReaderLink

__all__ = ["SingleReader", "Subscriptions", "read_subscribed"]

# How long one read of the subscriber connection waits; it bounds how late the
# reader notices a stop, a registration or a silent connection.
READ_TIMEOUT = 0.25


def covers(names: frozenset[str], channel: str) -> bool:
    """Whether subscribing to *names* (channels, and patterns ending in ``*``) delivers *channel*."""
    return channel in names or any(n.endswith("*") and channel.startswith(n[:-1]) for n in names)


class Subscriptions:
    """What the reader should be subscribed to, by generation. Thread-safe.

    :param always: channels subscribed whatever the handlers (the wake channel).
    """

    def __init__(self, always: frozenset[str]) -> None:
        self._cond = threading.Condition()
        self._always = always
        self.wanted: frozenset[str] = always
        self.generation = 0
        self.confirmed = -1
        self._closed = False  # the bus stopped: no confirmation will come

    def want(self, names: set[str]) -> int:
        """Ask for *names* (plus the permanent ones); return the generation to wait for."""
        with self._cond:
            self.wanted = frozenset(names) | self._always
            self.generation += 1
            return self.generation

    def current(self) -> tuple[frozenset[str], int]:
        with self._cond:
            return self.wanted, self.generation

    def confirm(self, generation: int) -> None:
        with self._cond:
            if generation > self.confirmed:
                self.confirmed = generation
                self._cond.notify_all()

    def wait(self, generation: int, timeout: float | None) -> bool:
        """Wait until Redis confirmed *generation* (or a later one); ``False`` after *timeout*.

        :raises BusClosedError: the bus stopped first (:meth:`close`).
        """
        with self._cond:
            self._cond.wait_for(lambda: self.confirmed >= generation or self._closed, timeout)
            if self.confirmed >= generation:
                return True
            if self._closed:
                raise BusClosedError("the bus stopped before Redis confirmed its subscriptions")
            return False

    def close(self) -> None:
        """The bus stops: wake every :meth:`wait`, which raises from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def up_to_date(self) -> bool:
        with self._cond:
            return self.confirmed == self.generation


class _Link:
    """The state of one subscriber connection: what it holds and what Redis has yet to answer."""

    def __init__(self) -> None:
        self.subscribed: frozenset[str] = frozenset()
        self.generation = -1
        self.unanswered = 0
        self.leaving: set[str] = set()  # shard channels this link asked to unsubscribe


def _never(_name: str) -> bool:
    return False


def read_subscribed(
    conn: Any,
    *,
    subscriptions: Subscriptions,
    stopping: threading.Event,
    receive: Callable[[str, bytes], None],
    confirmed: Callable[[frozenset[str]], None],
    health_check_interval: float,
    health_check_timeout: float,
    sharded: Callable[[str], bool] = _never,
    moved: Callable[[str], None] = lambda _channel: None,
) -> None:
    """The reader's loop on one connection, until *stopping* is set or the connection fails.

    :param receive: called with each message's channel and payload.
    :param confirmed: called on the reader thread with the channels held
        once Redis answered every (un)subscribe of a generation.
    :param sharded: which names are shard channels (``SSUBSCRIBE``, on a cluster).
    :param moved: called with a shard channel the server unsubscribed by
        itself: its slot moved to another node.
    """
    link = _Link()
    ping_sent_at: float | None = None
    last_heard = time.monotonic()
    while not stopping.is_set():
        # An unlocked read: a change missed here is seen on the next pass,
        # which the wake message makes immediate.
        if subscriptions.generation != link.generation:
            _sync(conn, link, subscriptions, confirmed, sharded)
        try:
            # One blocking read: a reply split by the timeout is kept by the
            # parser and completed by the next read.
            response = read_reply(conn, READ_TIMEOUT)
        except redis.TimeoutError:
            now = time.monotonic()
            if ping_sent_at is not None and now - ping_sent_at > health_check_timeout:
                raise ConnectionError(f"no PONG within {health_check_timeout} s") from None
            if ping_sent_at is None and now - last_heard > health_check_interval:
                conn.send_command("PING")
                ping_sent_at = now
            continue
        last_heard = time.monotonic()
        ping_sent_at = None
        # RESP2 subscriber replies: [b"message", channel, data],
        # [b"pmessage", pattern, channel, data], [b"subscribe", name, count],
        # [b"unsubscribe", name, count] (and p- and s-variants), [b"pong", b""].
        kind = response[0]
        if kind in (b"message", b"pmessage", b"smessage"):
            receive(response[-2].decode("utf-8", "replace"), response[-1])
        elif kind == b"sunsubscribe" and (name := response[1].decode("utf-8", "replace")) not in link.leaving:
            link.subscribed -= {name}  # the slot moved: Redis unsubscribed us by itself
            moved(name)
        elif kind in (
            b"subscribe",
            b"psubscribe",
            b"ssubscribe",
            b"unsubscribe",
            b"punsubscribe",
            b"sunsubscribe",
        ):
            if kind == b"sunsubscribe":
                link.leaving.discard(response[1].decode("utf-8", "replace"))
            link.unanswered -= 1
            if link.unanswered <= 0:
                link.unanswered = 0
                subscriptions.confirm(link.generation)
                confirmed(link.subscribed)


def _sync(
    conn: Any,
    link: _Link,
    subscriptions: Subscriptions,
    confirmed: Callable[[frozenset[str]], None],
    sharded: Callable[[str], bool],
) -> None:
    wanted, generation = subscriptions.current()
    add, remove = wanted - link.subscribed, link.subscribed - wanted
    shards_in = {n for n in add if sharded(n)}
    shards_out = {n for n in remove if sharded(n)}
    add, remove = add - shards_in, remove - shards_out
    for command, names in (
        ("PSUBSCRIBE", {n for n in add if n.endswith("*")}),
        ("SUBSCRIBE", {n for n in add if not n.endswith("*")}),
        ("PUNSUBSCRIBE", {n for n in remove if n.endswith("*")}),
        ("UNSUBSCRIBE", {n for n in remove if not n.endswith("*")}),
    ):
        if names:
            conn.send_command(command, *sorted(names))
            link.unanswered += len(names)
    # One command a shard channel: those of one command must share a slot.
    for name in sorted(shards_in):
        conn.send_command("SSUBSCRIBE", name)
    for name in sorted(shards_out):
        conn.send_command("SUNSUBSCRIBE", name)
    link.leaving |= shards_out
    link.unanswered += len(shards_in) + len(shards_out)
    link.subscribed, link.generation = wanted, generation
    if not link.unanswered:
        subscriptions.confirm(generation)
        confirmed(wanted)


class SingleReader:
    """The fan-out's reader on one connection: one Redis, a Sentinel's master, or a cluster's global
    pub/sub. One thread (``nekobot-bus-redis-reader``), supervised by *link*.

    :param read: the read loop (:func:`read_subscribed` with the bus's callbacks bound).
    :param confirmed: called on the reader thread when Redis confirmed a generation.
    :param wake: publishes to the wake channel, which the reader reads at once.
    """

    def __init__(
        self,
        link: ReaderLink,
        *,
        subs: Subscriptions,
        stopping: threading.Event,
        read: Callable[..., None],
        confirmed: Callable[[frozenset[str]], None],
        wake: Callable[[], None],
    ) -> None:
        self._link = link
        self._subs = subs
        self._stopping = stopping
        self._read = read
        self._confirmed = confirmed
        self._wake = wake
        self._thread: threading.Thread | None = None
        self._subscribed = False  # this connection's subscriptions were confirmed

    def start(self) -> None:
        self._link.starting = True
        self._thread = threading.Thread(
            target=self._link.run,
            args=(self._read_on, self._lost),
            name="nekobot-bus-redis-reader",
            daemon=True,
        )
        self._thread.start()

    def _read_on(self, conn: Any) -> None:
        self._read(conn, subscriptions=self._subs, stopping=self._stopping, confirmed=self._confirm)

    def _confirm(self, held: frozenset[str]) -> None:
        self._subscribed = True
        self._confirmed(held)

    def _lost(self) -> None:
        self._subscribed = False

    def apply(self) -> list[tuple[Subscriptions, int]]:
        """The wanted names changed: wake the reader, which applies them.

        :returns: what to wait for: the bus's subscriptions and their generation now.
        """
        _, generation = self._subs.current()
        self._wake()
        return [(self._subs, generation)]

    def set_starting(self, starting: bool) -> None:
        self._link.starting = starting

    def last_error(self) -> str | None:
        return self._link.last_error

    def owns(self, thread: threading.Thread) -> bool:
        return thread is self._thread

    def connected_since(self) -> float | None:
        return self._link.connected_since

    def subscribed(self) -> bool:
        return self._subscribed

    def stop(self, deadline: float) -> list[threading.Thread]:
        """Stop the thread (the bus set *stopping*); ``[thread]`` if it is still alive at *deadline*."""
        self._link.interrupt()
        return join_all([self._thread] if self._thread is not None else [], deadline)
