"""The base of both Redis deliveries: options, the sending client, and the reader's link."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

from ...bus import Bus, as_direction, as_message
from ...dispatch import Direction
from ...errors import BusClosedError, ConfigError
from ...message import Message
from .client import Reachability, client_options
from .options import DEFAULT_URL, ConnectionOptions, RedisConfig, read_config
from .reader_link import ReaderLink
from .topology import ClusterNodes, Server, Standalone

__all__ = ["RedisBase"]


class RedisBase(Bus):
    """What :class:`~nekobot_bus.backends.redis.RedisBus` and the queue delivery share.

    Sends run on a pooled client through a :class:`CommandRunner`; the reader
    thread reads RESP2 replies (plain arrays) on a connection of its own,
    supervised by a :class:`ReaderLink`.

    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://``
        for TLS, or a :class:`~.topology.Server` (a
        :class:`~.topology.SentinelMaster`); the password is never shown in
        ``repr()``, logs or errors.
    :param redis_options: passed to redis-py's connections (``ssl_*`` ...).
    :param options: the :class:`~.options.ConnectionOptions`, the
        delivery's options and the :class:`~nekobot_bus.DispatchOptions`, as
        keyword arguments; each is checked by its class's rules.
    """

    #: The ``bus.delivery`` this class is.
    delivery: ClassVar[str]
    #: The options class of the delivery.
    delivery_options: ClassVar[type[Any]]
    #: How logs call the reader thread.
    reader_name: ClassVar[str]

    def __init__(
        self,
        url: str | Server = DEFAULT_URL,
        *,
        redis_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        own = {field.name for field in attrs.fields(ConnectionOptions)}
        mine = {field.name for field in attrs.fields(self.delivery_options)}
        self.connection = ConnectionOptions(**{k: v for k, v in options.items() if k in own})
        self._delivery_options = self.delivery_options(**{k: v for k, v in options.items() if k in mine})
        self.server = Standalone(url) if isinstance(url, str) else url
        if isinstance(self.server, ClusterNodes) and {"{", "}"} & set(self.connection.prefix):
            raise ConfigError(
                f"bus.redis_prefix must not hold braces on a Redis Cluster, not {self.connection.prefix!r}: "
                "a cluster hashes only what is between them, so every channel would share one slot, "
                "on one node"
            )
        self._redis_options = redis_options
        super().__init__(**{k: v for k, v in options.items() if k not in own | mine})
        if self.dispatch != "threaded":
            raise ConfigError("dispatch 'inline' is for the local bus; the Redis reader never runs handlers")

    def _prepare_transport(self) -> None:
        self.keys = self.connection.keyspace
        self.prefix = self.keys.prefix
        self.address = self.server.address
        self.max_message_size = self.connection.max_message_size
        self.health_check_timeout = self.connection.health_check_timeout
        common = client_options(
            self._redis_options,
            socket_timeout=self.connection.socket_timeout,
            socket_connect_timeout=self.connection.socket_connect_timeout,
        )
        reachability = self._reachability = Reachability()
        self._runner = self.server.runner(
            self._metrics, self.send_timeout, reachability, **common, protocol=2
        )
        self._stopping = threading.Event()
        reader_options = common | {"protocol": 2, "decode_responses": False}
        reader_options["socket_timeout"] = self._reader_socket_timeout()
        self._reader_options = reader_options
        self._link = ReaderLink(
            self.server.pool(**reader_options),
            address=self.address,
            name=self.reader_name,
            metrics=self._metrics,
            stopping=self._stopping,
            reachability=reachability,
        )

    def _batch(
        self, direction: Direction | str, messages: Iterable[object]
    ) -> tuple[Direction, list[Message]]:
        """What ``send_many`` was given, checked: the direction (or its name) and the messages.

        :raises TypeError: naming what is not a direction or not a message.
        :raises BusClosedError: the bus was stopped.
        """
        way = as_direction(direction)
        if self._stopping.is_set():
            raise BusClosedError("the bus is stopped; nothing was sent")
        return way, [as_message(m) for m in messages]

    def _reader_socket_timeout(self) -> float:
        """The reader connection's socket timeout: a read is never left waiting longer."""
        return self.connection.socket_timeout

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Bus:
        checked = read_config(config)
        if checked.delivery != cls.delivery:
            raise ConfigError(
                f"bus.delivery {checked.delivery!r} is not what {cls.__name__} delivers ({cls.delivery!r}); "
                "create_bus() picks the class"
            )
        return cls.from_checked(checked)

    @classmethod
    def from_checked(cls, checked: RedisConfig) -> Bus:
        """Build from a config :func:`~.options.read_config` has read and checked."""
        return cls(
            checked.server,
            **attrs.asdict(checked.connection),
            **attrs.asdict(checked.delivery_options),
            **attrs.asdict(checked.dispatch),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} {self.address} prefix={self.prefix!r}>"
