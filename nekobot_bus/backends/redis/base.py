"""The base of both Redis deliveries: the address, the sending client, and the reader's link."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import redis

from ... import codec
from ...bus import Bus
from ...errors import ConfigError
from .client import DEFAULT_PREFIX, CommandRunner, check_prefix, client_options, make_client, redact
from .reader_link import ReaderLink

__all__ = ["RedisBase"]


class RedisBase(Bus):
    """What :class:`~nekobot_bus.backends.redis.RedisBus` and the queue delivery share.

    Sends run on a pooled client through a :class:`CommandRunner`; the reader
    thread reads RESP2 replies (plain arrays) on a connection of its own,
    supervised by a :class:`ReaderLink`.

    :param reader_name: how logs call the reader thread.
    :param reader_socket_timeout: the reader's socket timeout, when it differs
        from the other connections'.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_message_size: int = codec.DEFAULT_MAX_SIZE,
        redis_options: Mapping[str, Any] | None = None,
        reader_name: str,
        reader_socket_timeout: float | None = None,
        **bus_options: Any,
    ) -> None:
        super().__init__(**bus_options)
        if self.dispatch != "threaded":
            raise ConfigError("dispatch 'inline' is for the local bus; the Redis reader never runs handlers")
        self.prefix = check_prefix(prefix)
        self.address = redact(url)
        self.max_message_size = max_message_size
        options = client_options(redis_options)
        self._client = make_client(url, self.address, **options, protocol=2)
        self._runner = CommandRunner(self._client, self.address, self._metrics, self.send_timeout)
        self._stopping = threading.Event()
        reader_options = options | {"protocol": 2, "decode_responses": False}
        if reader_socket_timeout is not None:
            reader_options["socket_timeout"] = reader_socket_timeout
        self._link = ReaderLink(
            redis.ConnectionPool.from_url(url, **reader_options),
            address=self.address,
            name=reader_name,
            metrics=self._metrics,
            stopping=self._stopping,
        )
