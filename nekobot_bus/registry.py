"""Which way a message travels, and which handlers listen on which channel."""

from __future__ import annotations

import enum
import inspect
import threading
from collections.abc import Callable

from .message import WILDCARD, Message, validate_channel_id

__all__ = ["Direction", "Handler", "HandlerRegistry"]

#: A handler receives the message; what it returns is ignored, raising is a failure.
Handler = Callable[[Message], object]


class Direction(str, enum.Enum):
    """Which way a message travels: from a channel to the agent, or back."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"

    @property
    def suffix(self) -> str:
        """``"in"`` or ``"out"``, the suffix of this direction's counters."""
        return "in" if self is Direction.INBOUND else "out"

    def __str__(self) -> str:
        return self.value


class HandlerRegistry:
    """Which handlers listen on which channel, for one direction. Thread-safe.

    Writers copy and swap an immutable routing table under a lock; readers take
    the current table without locking, so a lookup on the hot path is one dict
    access and a registration never blocks a worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_channel: dict[str, tuple[Handler, ...]] = {}
        self._routes: dict[str, tuple[Handler, ...]] = {}
        self._wildcard: tuple[Handler, ...] = ()
        self._watched: frozenset[str] = frozenset()
        self._channels: frozenset[str] = frozenset()

    def add(self, channel_id: str, handler: Handler) -> None:
        """Add *handler* for *channel_id* (``"*"`` for every channel)."""
        validate_channel_id(channel_id, allow_wildcard=True)
        check_handler(handler)
        with self._lock:
            by_channel = dict(self._by_channel)
            by_channel[channel_id] = (*by_channel.get(channel_id, ()), handler)
            self._publish(by_channel)

    def remove_all(self, channel_id: str) -> int:
        """Remove every handler of *channel_id*; return how many there were."""
        validate_channel_id(channel_id, allow_wildcard=True)
        with self._lock:
            by_channel = dict(self._by_channel)
            removed = by_channel.pop(channel_id, ())
            self._publish(by_channel)
        return len(removed)

    def watch(self, channel_id: str) -> None:
        """Take *channel_id*'s messages in without a handler (replies to requests), for the
        registry's life: it has no handler to remove."""
        validate_channel_id(channel_id)
        with self._lock:
            self._watched |= {channel_id}
            self._publish(self._by_channel)

    def _publish(self, by_channel: dict[str, tuple[Handler, ...]]) -> None:
        wildcard = by_channel.get(WILDCARD, ())
        routes = {cid: handlers + wildcard for cid, handlers in by_channel.items() if cid != WILDCARD}
        # Readers may see the old or the new table, never a half-built one.
        self._by_channel, self._wildcard, self._routes = by_channel, wildcard, routes
        self._channels = frozenset(by_channel) | self._watched

    def lookup(self, channel_id: str) -> tuple[Handler, ...]:
        """Return the handlers a message on *channel_id* goes to, in registration order."""
        return self._routes.get(channel_id, self._wildcard)

    def channels(self) -> frozenset[str]:
        """The channel ids (and ``"*"``) that have at least one handler, or are watched."""
        return self._channels


def check_handler(handler: object) -> None:
    """Refuse *handler* now if it cannot be called with one message, rather than on every message.

    :raises TypeError: *handler* is not callable, or its signature takes no
        positional argument, or requires more than one.
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins and C callables have none: trust them
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        name = getattr(handler, "__qualname__", repr(handler))
        raise TypeError(
            f"handler {name}{signature} cannot be called with one message ({exc}); "
            "a handler takes the message as its one positional argument"
        ) from None
