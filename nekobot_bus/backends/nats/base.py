"""What both NATS deliveries share: the options, the loop thread that owns the connection, its lifecycle.

Threads and who owns them
-------------------------

nats-py is asyncio-only, so a NATS bus runs one event loop on a thread of
its own (``nekobot-bus-nats-loop``, :mod:`.loop`), started by ``start()``
and stopped by ``stop()``. The loop owns the NATS connection: it connects,
reconnects (forever, each time counted ``reconnects``; each loss counted
``connection_errors``), answers the server's PINGs and runs the client's
callbacks, which decode messages and offer them to the dispatchers without
waiting for room (the fan-out lets an idle worker start first, see
:mod:`.fanout`); no handler ever runs on the loop. ``send_*`` runs in the caller's
thread and hands the publish to the loop, waiting at most ``send_timeout``;
``register_*`` on a running bus waits as long for the server to confirm.

A send finds the connection down: it waits for it up to ``send_timeout``,
or raises at once when it has been down for longer than that (an outage,
not a blip): :class:`~nekobot_bus.BusConnectionError` saying nothing was sent.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

import nats
from nats.aio.client import Client
from nats.errors import SlowConsumerError

from ..._urls import redact
from ...bus import Bus, as_direction, as_message
from ...dispatch import Direction
from ...errors import BusClosedError, BusConnectionError, ConfigError
from ...message import Message
from ..remote_options import build_remote, split_options
from ..start_hold import StartHold
from .loop import LoopThread
from .options import DEFAULT_NATS_URL, NatsConfig, NatsOptions, read_config
from .subjects import Subjects, token

__all__ = ["NatsBase", "Unreachable"]

logger = logging.getLogger("nekobot_bus.nats")


class Unreachable(Exception):
    """Raised on the loop when no connection is there to publish on: nothing was sent."""


class NatsBase(Bus):
    """The connection side of a NATS bus; :class:`~.fanout.NatsBus` and
    :class:`~.queue.NatsQueueBus` are its two deliveries.

    :param nats_url: one ``nats://`` or ``tls://`` URL, or a list of them;
        a user, password or token in them is never shown.
    :param options: the :class:`~.options.NatsOptions`, the delivery's
        options and the :class:`~nekobot_bus.DispatchOptions`, as keyword arguments.
    """

    #: The ``bus.delivery`` this class delivers, and the attrs class of its options.
    delivery: ClassVar[str]
    delivery_options: ClassVar[type]
    extra_metrics: ClassVar[tuple[str, ...]] = (
        *("sent_in", "sent_out", "decode_errors"),
        *("reconnects", "connection_errors"),
    )

    def __init__(self, nats_url: str | list[str] = DEFAULT_NATS_URL, **options: Any) -> None:
        own, mine, rest = split_options(options, NatsOptions, self.delivery_options)
        self.nats = NatsOptions(nats_url=nats_url, **own)
        self._delivery_options = self.delivery_options(**mine)
        super().__init__(**rest)
        if self.dispatch != "threaded":
            raise ConfigError("dispatch 'inline' is for the local bus; the NATS loop never runs handlers")

    def _prepare_transport(self) -> None:
        self.servers = self.nats.servers
        self.address = ",".join(redact(url) for url in self.servers)
        self.subjects = Subjects(self.nats.subject_prefix)
        self.max_message_size = self.nats.max_message_size
        self._loop = LoopThread("nekobot-bus-nats-loop")
        self._client: Client | None = None
        self._hold = StartHold(self.queue_size * self.workers, self._metrics)
        self._stopping = threading.Event()
        self._down_since: float | None = None  # monotonic; set while disconnected
        self._up: asyncio.Event | None = None  # the loop's view of the same
        self._last_message_at: float | None = None
        self._outage_told = False

    def _intake_bytes(self) -> int:
        return self.nats.intake_bytes

    @classmethod
    def from_config(cls, config: Any) -> Bus:
        return cls.from_checked(read_config(config))

    @classmethod
    def from_checked(cls, checked: NatsConfig) -> Bus:
        """Build from a config :func:`~.options.read_config` has read and checked."""
        return build_remote(cls, checked, "nats_url")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} {self.address} prefix={self.subjects.prefix!r}>"

    @property
    def _timeout(self) -> float:
        return self.send_timeout if self.send_timeout is not None else 30.0

    @property
    def _flush_timeout(self) -> Any:  # nats-py annotates it int, and takes a float
        return self._timeout

    # -- lifecycle (caller's thread) ----------------------------------------

    def _start_transport(self) -> None:
        self._loop.start()
        try:
            self._loop.call(self._connect(), self.nats.connect_timeout * len(self.servers) + self._timeout)
            self._loop.call(self._apply_subscriptions(), self._timeout)
        except BaseException as exc:
            self._abandon_start()
            if isinstance(exc, (TimeoutError, OSError, nats.errors.Error)):
                raise BusConnectionError(f"could not connect to NATS at {self.address}: {exc}") from None
            raise
        try:
            self._hold.release(self._publish_batch)
        except BaseException:
            self._abandon_start()
            raise

    def _abandon_start(self) -> None:
        """Close what a failed start() opened, so that start() may be tried again."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):  # the loop stops below whatever close() did
                self._loop.call(client.close(), 2.0)
        self._loop.stop(2.0)
        self._client = None
        self._forget_subscriptions()

    def _close(
        self, deadline: float, before: Callable[[], Awaitable[None]] | None = None
    ) -> list[threading.Thread]:
        """Close the connection (after awaiting ``before()``, if given) and stop the loop, by *deadline*."""
        client = self._client
        if client is None:  # never started, or a start that failed closed what it opened
            self._hold.drop_all()
            return []

        async def close() -> None:
            if before is not None:
                await before()
            await client.close()  # with the server down, close() cancels the reconnecting and returns

        try:
            self._loop.call(close(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # the loop stops below whatever close() did
            logger.warning("the NATS connection to %s did not close cleanly: %r", self.address, exc)
        alive = self._loop.stop(max(0.1, deadline - time.monotonic()))
        self._hold.drop_all()
        return [alive] if alive is not None else []

    # -- the connection (loop thread) ----------------------------------------

    async def _connect(self) -> None:
        self._up = asyncio.Event()
        client = Client()
        # nats-py annotates its seconds as int, and takes floats: hence Any.
        settings: dict[str, Any] = {
            "connect_timeout": self.nats.connect_timeout,
            "reconnect_time_wait": 0.5,
            "ping_interval": self.nats.health_check_interval,
        }
        await client.connect(
            servers=self.servers,
            name=f"nekobot-bus-{os.getpid()}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **settings,
        )
        self._client = client
        await self._connected(client)
        self._up.set()

    async def _connected(self, client: Client) -> None:
        """Called on the loop once *client* is connected, before any send may use it."""

    async def _on_disconnected(self) -> None:
        if self._up is not None:
            self._up.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not self._stopping.is_set():
            self._metrics.incr("connection_errors")
            if not self._outage_told:
                self._outage_told = True
                logger.warning(
                    "lost the connection to NATS at %s; reconnecting until it answers", self.address
                )

    async def _on_reconnected(self) -> None:
        self._down_since = None
        self._outage_told = False
        self._metrics.incr("reconnects")
        if self._up is not None:
            self._up.set()
        logger.info("reconnected to NATS at %s", self._connected_to())

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            name = self.subjects.parse(exc.subject)
            direction = name.direction if name is not None else Direction.INBOUND
            self._metrics.accepted(f"messages_{direction.suffix}")
            self._metrics.finished(f"dropped_{direction.suffix}")
            logger.warning("NATS dropped a message on %s for this slow subscriber", exc.subject)
            return
        if not self._stopping.is_set():
            self._metrics.incr("connection_errors")
            logger.debug("NATS client error: %s", exc)

    def _connected_to(self) -> str:
        client = self._client
        url = client.connected_url if client is not None else None
        return redact(url.geturl()) if url is not None else self.address

    async def _wait_up(self) -> Client:
        """The client, once connected; wait at most ``send_timeout`` for a connection that is down.

        :raises Unreachable: nothing was sent.
        """
        client, up = self._client, self._up
        if client is None or up is None:
            raise Unreachable("is not connected; nothing was sent")
        if not up.is_set():
            down = time.monotonic() - (self._down_since or time.monotonic())
            if down > self._timeout:  # an outage, not a blip: do not make every caller wait it out
                raise Unreachable(f"has been unreachable for {down:.1f} s; nothing was sent")
            try:
                await asyncio.wait_for(up.wait(), self._timeout)
            except asyncio.TimeoutError:
                raise Unreachable(f"unreachable for {self._timeout} s; nothing was sent") from None
        return client

    # -- subscriptions -------------------------------------------------------------

    def _check_channel(self, channel_id: str) -> None:
        token(channel_id)  # a channel id NATS would misread is refused before anything changes

    def _handlers_changed(self, direction: Direction, channels: frozenset[str]) -> None:
        if not self.running or self._loop.on_loop:
            return
        try:
            self._loop.call(self._apply_subscriptions(), self._timeout)
        except RuntimeError:
            if self._stopping.is_set():
                raise BusClosedError(f"{self!r} stopped while its subscriptions changed") from None
            raise
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusConnectionError(
                f"NATS at {self.address} did not confirm the subscription change within "
                f"{self._timeout} s ({exc}); the client applies it once it is connected again"
            ) from None

    @abc.abstractmethod
    async def _apply_subscriptions(self) -> None:
        """On the loop: read what the handlers registered now ask for, and nothing else."""

    @abc.abstractmethod
    def _forget_subscriptions(self) -> None:
        """After a failed start: forget what the abandoned connection read."""

    # -- sending ----------------------------------------------------------------

    def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """Send *messages* and wait for the server to confirm, in one round trip.

        :param direction: :class:`~nekobot_bus.Direction` or its name, ``"inbound"`` or ``"outbound"``.
        :raises BusConnectionError: NATS was unreachable for ``send_timeout``
            seconds (nothing was sent), or did not confirm within it.
        """
        way = as_direction(direction)
        batch = [as_message(m) for m in messages]
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        self._publish_batch(way, batch)

    @abc.abstractmethod
    def _publish_batch(self, direction: Direction, batch: list[Message]) -> None:
        """Send *batch* now, in the caller's thread; also what ``start()`` sends of what was held."""

    # -- observing ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Whether the connection is up, to which server, how often it reconnected, the last message's age."""
        client = self._client
        connected = self.running and client is not None and client.is_connected
        last = self._last_message_at
        return super().health() | {
            "connected": connected,
            "server": self._connected_to() if connected else None,
            "address": self.address,
            "last_message_age": None if last is None else max(0.0, time.time() - last),
            "reconnects": self._metrics.snapshot()["reconnects"],
        }
