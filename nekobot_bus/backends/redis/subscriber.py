"""The fan-out's reader: which channels to subscribe, and the read loop on one connection.

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

from .compat import read_reply

__all__ = ["Subscriptions", "read_subscribed"]

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
        """Wait until Redis confirmed *generation* (or a later one)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.confirmed >= generation, timeout)

    def up_to_date(self) -> bool:
        with self._cond:
            return self.confirmed == self.generation


class _Link:
    """The state of one subscriber connection: what it holds and what Redis has yet to answer."""

    def __init__(self) -> None:
        self.subscribed: frozenset[str] = frozenset()
        self.generation = -1
        self.unanswered = 0


def read_subscribed(
    conn: Any,
    *,
    subscriptions: Subscriptions,
    stopping: threading.Event,
    receive: Callable[[str, bytes], None],
    confirmed: Callable[[frozenset[str]], None],
    health_check_interval: float,
    health_check_timeout: float,
) -> None:
    """The reader's loop on one connection, until *stopping* is set or the connection fails.

    :param receive: called with each message's channel and payload.
    :param confirmed: called on the reader thread with the channels held
        once Redis answered every (un)subscribe of a generation.
    """
    link = _Link()
    ping_sent_at: float | None = None
    last_heard = time.monotonic()
    while not stopping.is_set():
        # An unlocked read: a change missed here is seen on the next pass,
        # which the wake message makes immediate.
        if subscriptions.generation != link.generation:
            _sync(conn, link, subscriptions, confirmed)
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
        # [b"unsubscribe", name, count] (and p-variants), [b"pong", b""].
        kind = response[0]
        if kind in (b"message", b"pmessage"):
            receive(response[-2].decode("utf-8", "replace"), response[-1])
        elif kind in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
            link.unanswered -= 1
            if link.unanswered <= 0:
                link.unanswered = 0
                subscriptions.confirm(link.generation)
                confirmed(link.subscribed)


def _sync(
    conn: Any, link: _Link, subscriptions: Subscriptions, confirmed: Callable[[frozenset[str]], None]
) -> None:
    wanted, generation = subscriptions.current()
    add, remove = wanted - link.subscribed, link.subscribed - wanted
    for command, names in (
        ("PSUBSCRIBE", {n for n in add if n.endswith("*")}),
        ("SUBSCRIBE", {n for n in add if not n.endswith("*")}),
        ("PUNSUBSCRIBE", {n for n in remove if n.endswith("*")}),
        ("UNSUBSCRIBE", {n for n in remove if not n.endswith("*")}),
    ):
        if names:
            conn.send_command(command, *sorted(names))
            link.unanswered += len(names)
    link.subscribed, link.generation = wanted, generation
    if not link.unanswered:
        subscriptions.confirm(generation)
        confirmed(wanted)
