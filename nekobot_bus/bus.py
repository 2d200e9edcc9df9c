"""The :class:`Bus` contract that every backend fulfils.

A backend is a subclass that moves messages from ``send_*`` to the
:class:`~nekobot_bus.dispatch.Dispatcher` of their direction, somewhere: the
local bus hands them over directly, a remote bus through its server. The base
class owns everything else: handler registration, the dispatchers and their
worker threads, metrics, and the lifecycle (``start``/``stop``/``with``).
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Literal

from ._options import Section
from .dispatch import Direction, Dispatcher, Handler, HandlerRegistry, Settle
from .errors import BusClosedError, ConfigError
from .message import Message
from .metrics import Metrics

__all__ = ["DEFAULT_QUEUE_SIZE", "DEFAULT_SEND_TIMEOUT", "DEFAULT_WORKERS", "Bus", "DispatchMode"]

DispatchMode = Literal["threaded", "inline"]

#: Default bound of each worker's queue (the gateway's ``message_queue_size``).
DEFAULT_QUEUE_SIZE = 100
#: Default worker threads per direction.
DEFAULT_WORKERS = 4
#: Default seconds a send waits for room in a full queue.
DEFAULT_SEND_TIMEOUT = 5.0

_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"


class Bus(abc.ABC):
    """Routes messages between chat channels and the agent.

    Thread-safe: every method may be called from any thread, handlers
    included (a handler may send). ``start`` and ``stop`` are serialised.

    :param queue_size: bound of each worker's queue.
    :param workers: worker threads per direction; a session always goes to
        the same one.
    :param send_timeout: seconds a send waits for room in a full queue before
        raising :class:`~nekobot_bus.BusFullError`; ``None`` waits forever.
    :param dispatch: ``"threaded"`` runs handlers on worker threads;
        ``"inline"`` runs them in the thread that sends (or receives, for a
        remote bus) for the lowest latency and deterministic tests.
    """

    #: The ``bus.type`` this class is registered under in :func:`~nekobot_bus.create_bus`.
    type_name: ClassVar[str]

    #: Counters this backend adds to :meth:`get_metrics`.
    extra_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        workers: int = DEFAULT_WORKERS,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        dispatch: DispatchMode = "threaded",
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"queue_size must be a positive int, not {queue_size!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a positive int, not {workers!r}")
        if send_timeout is not None and (
            isinstance(send_timeout, bool) or not isinstance(send_timeout, (int, float)) or send_timeout < 0
        ):
            raise ConfigError(f"send_timeout must be a number >= 0 or None, not {send_timeout!r}")
        if dispatch not in ("threaded", "inline"):
            raise ConfigError(f"dispatch must be 'threaded' or 'inline', not {dispatch!r}")
        self.queue_size = queue_size
        self.workers = workers
        self.send_timeout = send_timeout
        self.dispatch: DispatchMode = dispatch
        self._metrics = Metrics(self.extra_metrics)
        self._registries = {d: HandlerRegistry() for d in Direction}
        self._dispatchers = {
            d: Dispatcher(
                d,
                self._registries[d],
                self._metrics,
                workers=workers,
                queue_size=queue_size,
                inline=dispatch == "inline",
                thread_prefix=f"nekobot-bus-{self.type_name}",
                settle=self._settle_hook(d),
            )
            for d in Direction
        }
        self._lifecycle = threading.Lock()
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
            for dispatcher in self._dispatchers.values():
                dispatcher.start()
            self._state = _RUNNING

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
            alive = self._stop_transport(deadline, drain=drain)
            for dispatcher in self._dispatchers.values():
                alive += dispatcher.stop(deadline, drain=drain)
            alive += self._close_transport(deadline)
            return not alive

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
        self._send(Direction.INBOUND, _checked(message))

    def send_outbound(self, message: Message) -> None:
        """Send *message* from the agent towards its channel.

        :raises BusFullError: no room within ``send_timeout``.
        :raises BusClosedError: the bus was stopped.
        """
        self._send(Direction.OUTBOUND, _checked(message))

    # -- observing --------------------------------------------------------

    def get_metrics(self) -> dict[str, int]:
        """Return every counter at one instant; see README.rst for each key."""
        return self._metrics.snapshot()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every message this bus has taken is finished.

        :returns: ``False`` if *timeout* seconds passed first.
        """
        return self._metrics.wait_idle(timeout)

    # -- for backends -----------------------------------------------------

    @abc.abstractmethod
    def _send(self, direction: Direction, message: Message) -> None:
        """Move *message* towards the dispatcher of *direction*, or raise."""

    def _start_transport(self) -> None:  # noqa: B027 - optional hook
        """Connect; called by :meth:`start` before the workers start."""

    def _stop_transport(self, deadline: float, *, drain: bool) -> list[threading.Thread]:
        """Disconnect by *deadline*; return the transport's threads still alive."""
        return []

    def _close_transport(self, deadline: float) -> list[threading.Thread]:
        """Release what the workers needed until they stopped; return threads still alive."""
        return []

    def _settle_hook(self, direction: Direction) -> Settle | None:
        """The :data:`~nekobot_bus.dispatch.Settle` callback of *direction*'s dispatcher, if any."""
        return None

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:  # noqa: B027
        """Called after each registration change with the channels that have handlers."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> Bus:
        """Build the bus from a parsed config (the whole document).

        :raises ConfigError: naming the key that is wrong and why.
        """

    @staticmethod
    def dispatch_options(bus: Section, gateway: Section) -> dict[str, Any]:
        """Read the options every backend shares, as keyword arguments of :class:`Bus`."""
        return {
            "queue_size": gateway.integer("message_queue_size", DEFAULT_QUEUE_SIZE, minimum=1),
            "workers": bus.integer("workers", DEFAULT_WORKERS, minimum=1),
            "send_timeout": bus.seconds("send_timeout", DEFAULT_SEND_TIMEOUT),
            "dispatch": bus.text("dispatch", "threaded", choices=("threaded", "inline")),
        }


def _checked(message: object) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"expected a nekobot_bus.Message, not {type(message).__name__}")
    return message
