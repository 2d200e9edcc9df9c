"""The :class:`Bus` contract that every backend fulfils.

A backend is a subclass that moves messages from ``send_*`` to the
:class:`~nekobot_bus.dispatch.Dispatcher` of their direction, somewhere: the
local bus hands them over directly, a remote bus through its server. The base
class owns everything else: handler registration, the dispatchers and their
worker threads, metrics, and the lifecycle (``start``/``stop``/``with``).
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Literal

from ._options import DispatchOptions
from .dispatch import DEFAULT_INTAKE_BYTES, Direction, Dispatcher, Handler, HandlerRegistry
from .errors import BusClosedError, BusNotStartedError, RequestTimeoutError
from .message import WILDCARD, Message, validate_channel_id
from .metrics import Metrics
from .requests import REQUEST_COUNTERS, REQUEST_GAUGES, PendingRequest, PendingRequests
from .settle import Gate, Settler

__all__ = ["Bus", "DispatchMode", "as_direction", "as_message"]

DispatchMode = Literal["threaded", "inline"]


_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"


class Bus(abc.ABC):
    """Routes messages between chat channels and the agent.

    Thread-safe: every method may be called from any thread, handlers
    included (a handler may send). ``start`` and ``stop`` are serialised.

    Keyword arguments are the :class:`~nekobot_bus.DispatchOptions`
    (``queue_size``, ``workers``, ``send_timeout``, ``dispatch``,
    ``max_requests``), with the same defaults and rules as in a config.
    """

    #: The ``bus.type`` whose config builds exactly this class, for a backend
    #: registered as a class; a factory that picks among classes owns its name.
    type_name: ClassVar[str | None] = None

    #: Counters this backend adds to :meth:`get_metrics`.
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    #: Gauges (levels, not totals) this backend adds to :meth:`get_metrics`.
    extra_gauges: ClassVar[tuple[str, ...]] = ()
    #: What the bus's threads are named after: ``nekobot-bus-{thread_name}-...``.
    thread_name: ClassVar[str]

    def __init__(self, **dispatch: Any) -> None:
        options = DispatchOptions(**dispatch)
        #: What the keyword arguments (or the config) set: see :class:`~nekobot_bus.DispatchOptions`.
        self.options = options
        self.queue_size = options.queue_size
        self.workers = options.workers
        self.send_timeout = options.send_timeout
        self.dispatch: DispatchMode = "inline" if options.dispatch == "inline" else "threaded"
        self._metrics = Metrics(
            (*REQUEST_COUNTERS, *self.extra_metrics), (*REQUEST_GAUGES, *self.extra_gauges)
        )
        self._registries = {d: HandlerRegistry() for d in Direction}
        self._requests = PendingRequests(self._metrics, options.max_requests)
        self._watch_lock = threading.Lock()
        self._watched: set[str] = set()  # outbound channels whose replies this bus is sure to see
        self._prepare_transport()
        self._dispatchers: dict[Direction, Dispatcher[Any]] = {
            d: Dispatcher(
                d,
                self._registries[d],
                self._metrics,
                workers=options.workers,
                queue_size=options.queue_size,
                inline=options.dispatch == "inline",
                thread_prefix=f"nekobot-bus-{self.thread_name}",
                settler=self._settler(d),
                gate=self._gate(d),
                intake_bytes=self._intake_bytes(),
                observe=self._requests.offer if d is Direction.OUTBOUND else None,
            )
            for d in Direction
        }
        self._lifecycle = threading.Lock()
        #: Set by a transport whose drain at stop() could not finish (its server was away).
        self._drain_failed = False
        self._state = _NEW

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} dispatch={self.dispatch} workers={self.workers}>"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start delivering. Calling it on a running bus does nothing.

        :raises BusClosedError: the bus was stopped; a bus is not restarted.
        """
        with self._lifecycle:
            if self._state == _RUNNING:
                return
            if self._state == _STOPPED:
                raise BusClosedError(f"{self!r} was stopped and cannot be started again")
            self._start_transport()
            # Running before the workers start: a handler may already run (a
            # message sent before start()) and must see a running bus.
            self._state = _RUNNING
            for dispatcher in self._dispatchers.values():
                dispatcher.start()

    def stop(self, timeout: float = 10.0, drain: bool = True) -> bool:
        """Stop the bus within *timeout* seconds; calling it again does nothing.

        New sends raise :class:`~nekobot_bus.BusClosedError` from here on.

        :param drain: handle every message already taken before returning;
            with ``False`` they are counted as ``dropped`` instead.
        :returns: ``True`` if every thread of the bus ended in time; ``False``
            if one did not (a handler that never returns), which is logged.
        """
        deadline = time.monotonic() + timeout
        with self._lifecycle:
            if self._state == _STOPPED:
                return True
            self._state = _STOPPED
            self._requests.close()
            alive = self._stop_transport(deadline, drain=drain)
            for dispatcher in self._dispatchers.values():
                alive += dispatcher.stop(deadline, drain=drain)
            alive += self._close_transport(deadline)
            return not alive and not (drain and self._drain_failed)

    def __enter__(self) -> Bus:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the bus has been started and not stopped."""
        return self._state == _RUNNING

    # -- handlers ---------------------------------------------------------

    def register_inbound_handler(self, channel_id: str, handler: Handler) -> None:
        """Call *handler* for each inbound message of *channel_id* (``"*"``: every channel)."""
        self._register(Direction.INBOUND, channel_id, handler)

    def unregister_inbound_handlers(self, channel_id: str) -> None:
        """Remove every inbound handler of *channel_id*."""
        self._unregister(Direction.INBOUND, channel_id)

    def register_outbound_handler(self, channel_id: str, handler: Handler) -> None:
        """Call *handler* for each outbound message of *channel_id* (``"*"``: every channel)."""
        self._register(Direction.OUTBOUND, channel_id, handler)

    def unregister_outbound_handlers(self, channel_id: str) -> None:
        """Remove every outbound handler of *channel_id*."""
        self._unregister(Direction.OUTBOUND, channel_id)

    #: Alias of :meth:`register_outbound_handler`, as in the Go gateway.
    register_handler = register_outbound_handler
    #: Alias of :meth:`unregister_outbound_handlers`, as in the Go gateway.
    unregister_handlers = unregister_outbound_handlers

    def _register(self, direction: Direction, channel_id: str, handler: Handler) -> None:
        registry = self._registries[direction]
        if validate_channel_id(channel_id, allow_wildcard=True) != WILDCARD:
            self._check_channel(channel_id)
        registry.add(channel_id, handler)
        self._handlers_changed(direction, registry.channels())

    def _unregister(self, direction: Direction, channel_id: str) -> None:
        registry = self._registries[direction]
        registry.remove_all(channel_id)
        self._handlers_changed(direction, registry.channels())

    # -- sending ----------------------------------------------------------

    def send_inbound(self, message: Message) -> None:
        """Send *message* from a channel towards the agent.

        :raises BusFullError: no room within ``send_timeout``.
        :raises BusClosedError: the bus was stopped.
        """
        self._send(Direction.INBOUND, message if type(message) is Message else as_message(message))

    def send_outbound(self, message: Message) -> None:
        """Send *message* from the agent towards its channel.

        :raises BusFullError: no room within ``send_timeout``.
        :raises BusClosedError: the bus was stopped.
        """
        self._send(Direction.OUTBOUND, message if type(message) is Message else as_message(message))

    def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """Send *messages* in *direction*, in order; a remote bus sends them in one round trip.

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises TypeError: naming what is not a direction or not a message (nothing was sent).
        :raises BusFullError: no room within ``send_timeout`` (the messages before it were sent).
        :raises BusClosedError: the bus was stopped.
        """
        way = as_direction(direction)
        for message in [as_message(m) for m in messages]:
            self._send(way, message)

    # -- asking -----------------------------------------------------------

    def request(self, message: Message, timeout: float | None = 30.0) -> Message:
        """Send *message* inbound and return the first outbound reply to it (``reply_to == message.id``).

        The reply also goes to this bus's outbound handlers of its channel,
        as any outbound message does (counted ``no_handler_out`` where there
        are none), and to whichever process would get it without a request.
        The first request on a channel makes this bus take that channel's
        outbound messages in from then on (a subscription, on a remote bus),
        so that no reply can come before the bus listens.

        :param timeout: seconds to wait for the reply once the send returned
            (the send may take up to ``send_timeout``, and the first request
            on a channel its subscription as long); ``None`` waits until it
            comes or the bus stops.
        :raises RequestTimeoutError: no reply came in time; the request is forgotten.
        :raises BusClosedError: the bus stopped before the reply came.
        :raises BusFullError: ``max_requests`` requests are pending, or the send found no room.
        :raises BusConnectionError: a remote bus could not send it, or listen for its reply.
        :raises ValueError: a request of the same message id is pending.
        :raises BusNotStartedError: the bus was not started (yet: a Flask app's bus starts in
            the background; answer 503).
        """
        pending = self._ask(message)
        if not pending.wait(timeout):
            error = RequestTimeoutError(f"no reply to request {message.id!r} came within {timeout} s")
            if self._forget(pending, error, timed_out=True):
                raise error
            pending.wait(None)  # its reply (or stop()) is ending it on another thread, now
        return pending.result()

    def _ask(
        self, message: Message, on_done: Callable[[PendingRequest], None] | None = None
    ) -> PendingRequest:
        """Send *message* inbound as a request and return at once what awaits its reply.

        What :meth:`request` waits on; for a caller that waits its own way
        (:mod:`nekobot_bus.aio`). A request left pending must be ended with
        :meth:`_forget`. Raises as :meth:`request` does when sending fails.

        :param on_done: called once when the request ends, on the thread
            that ends it; it must not block.
        """
        message = message if type(message) is Message else as_message(message)
        if self._state == _NEW:
            raise BusNotStartedError(
                f"start {self!r} before a request: a reply could come before the bus listens for it"
            )
        pending = self._requests.open(message, on_done)
        try:
            self._watch_replies(message.channel_id)
            self._send(Direction.INBOUND, message)
        except Exception as exc:
            if self._forget(pending, exc):
                raise
            # Ended meanwhile: stop() woke it (a stop breaks a subscription in progress).
        return pending

    def _forget(self, pending: PendingRequest, error: BaseException, *, timed_out: bool = False) -> bool:
        """End *pending* with *error*, counted ``request_timeouts`` or ``request_failures``, unless
        it ended already (its reply came meanwhile: take that)."""
        return self._requests.abandon(pending, "request_timeouts" if timed_out else "request_failures", error)

    def _watch_replies(self, channel_id: str) -> None:
        """Make sure the outbound messages of *channel_id* reach this bus from now on.

        Once per channel: a second request on a new channel waits for the first's
        :meth:`_listen_for_replies` to return.
        """
        if channel_id in self._watched:  # without the lock: the path of every later request
            return
        with self._watch_lock:
            if channel_id in self._watched:
                return
            self._listen_for_replies(channel_id)
            self._watched.add(channel_id)

    def _listen_for_replies(self, channel_id: str) -> None:
        """Have every outbound message of *channel_id* from now on reach ``self._requests.offer``;
        on a remote bus, confirmed by the server before this returns.

        Here: by taking the channel in as if it had a handler (a fan-out
        subscription). A queue delivery, where that would take other
        processes' messages, overrides it.
        """
        registry = self._registries[Direction.OUTBOUND]
        registry.watch(channel_id)
        self._handlers_changed(Direction.OUTBOUND, registry.channels())

    # -- observing --------------------------------------------------------

    def get_metrics(self) -> dict[str, int]:
        """Return every counter at one instant; see README.rst for each key."""
        return self._metrics.snapshot()

    def gauge_names(self) -> frozenset[str]:
        """The keys of :meth:`get_metrics` that are levels (``queue_depth``), not running totals."""
        return self._metrics.gauge_names

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every message this bus has taken is finished.

        :returns: ``False`` if *timeout* seconds passed first.
        """
        return self._metrics.wait_idle(timeout)

    def health(self) -> dict[str, Any]:
        """Whether the bus can do its job now, for a health check.

        Every backend answers with at least ``connected`` (``True`` when the
        bus runs and, for a remote one, its link to the server is up),
        ``backend`` and ``pid``; remote backends add what they know of
        their server.
        """
        return {"connected": self.running, "backend": self.thread_name, "pid": os.getpid()}

    # -- for backends -----------------------------------------------------

    @abc.abstractmethod
    def _send(self, direction: Direction, message: Message) -> None:
        """Move *message* towards the dispatcher of *direction*, or raise."""

    def _prepare_transport(self) -> None:  # noqa: B027 - optional hook
        """Build what the transport needs, its settler and gate included; called by the
        constructor once the options and metrics exist, before the dispatchers."""

    def _start_transport(self) -> None:  # noqa: B027 - optional hook
        """Connect; called by :meth:`start` before the workers start."""

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """Disconnect by *deadline*; return the transport's threads still alive."""
        return []

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        """Release what the workers needed until they stopped; return threads still alive."""
        return []

    def _settler(self, direction: Direction) -> Settler[Any] | None:
        """What settles the messages of *direction*, for a transport that confirms them."""
        return None

    def _intake_bytes(self) -> int:
        """The budget of a reader that hands messages over without waiting (the fan-out's)."""
        return DEFAULT_INTAKE_BYTES

    def _gate(self, direction: Direction) -> Gate[Any] | None:
        """What decides whether this process handles a message of *direction* at all, if anything."""
        return None

    def _check_channel(self, channel_id: str) -> None:  # noqa: B027 - optional hook
        """Refuse a channel id this transport cannot carry (:class:`~nekobot_bus.InvalidChannelError`)."""

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:  # noqa: B027
        """Called after each registration change with the channels that have handlers."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> Bus:
        """Build the bus from a parsed config (the whole document).

        :raises ConfigError: naming the key that is wrong and why.
        """


def as_direction(direction: object) -> Direction:
    """*direction* as a :class:`Direction`: one, or its name; else a ``TypeError`` naming what it is."""
    try:
        return Direction(direction)
    except ValueError:
        wanted = "a Direction, 'inbound' or 'outbound'"
        raise TypeError(f"direction must be {wanted}, not {direction!r}") from None


def as_message(message: object) -> Message:
    """*message*, if it is a :class:`Message`; else a ``TypeError`` naming what it is."""
    if not isinstance(message, Message):
        raise TypeError(f"expected a nekobot_bus.Message, not {type(message).__name__}")
    return message
