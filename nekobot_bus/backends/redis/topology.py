"""Where a bus's Redis is: one server by URL, or the master a set of Sentinels names.

Everything that connects (the sending client, a reader's pool, ``tail``,
the reachability check) asks a :class:`Server` for it, so the deliveries
do not care which topology they run on.

With Sentinel, each new connection asks the sentinels for the master's
address first (redis-py's ``SentinelConnectionPool``), so after a failover
the reader's reconnect and the senders' next connection find the new
master by themselves. A connection still open to a master that was
demoted gets ``READONLY`` for a write: redis-py's Sentinel connection would
turn that reply into a broken connection, which a sender could not tell
from one that broke after Redis ran the command; ours keeps it a reply, so
the :class:`~.client.CommandRunner` knows the command did not run, drops
the connection and sends it again to the new master, within ``send_timeout``.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import redis
from redis.connection import Connection
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .client import make_client, redact

__all__ = ["SentinelMaster", "Server", "Standalone"]


class Server(abc.ABC):
    """A Redis the bus talks to; the options are redis-py's connection options."""

    #: How logs, errors and ``repr()`` show it: never with a password.
    address: str

    @abc.abstractmethod
    def client(self, **options: Any) -> redis.Redis:
        """A client for commands, on a pool of its own."""

    @abc.abstractmethod
    def pool(self, **options: Any) -> redis.ConnectionPool:
        """A pool for a reader's connection."""

    def in_use(self) -> str | None:
        """The ``host:port`` of the server last connected to, where that can differ from :attr:`address`."""
        return None

    @property
    def port(self) -> int | None:
        """The one port this server is on, for a hint to start it; ``None`` for several."""
        return None


class Standalone(Server):
    """One Redis at *url*: ``redis://``, ``rediss://`` (TLS) or ``unix://``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.address = redact(url)

    def client(self, **options: Any) -> redis.Redis:
        return make_client(self.url, self.address, **options)

    def pool(self, **options: Any) -> redis.ConnectionPool:
        return redis.ConnectionPool.from_url(self.url, **options)

    @property
    def port(self) -> int | None:
        parsed = redis.connection.parse_url(self.url)
        port = parsed.get("port")
        return int(port) if port is not None else 6379

    def __repr__(self) -> str:
        return f"Standalone({self.address!r})"


class _MasterConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that keeps ``READONLY`` a reply: the command did not run."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        return Connection.read_response(self, *args, **kwargs)


class SentinelMaster(Server):
    """The master that *sentinels* know as *master*; the credentials and *db* apply to the master.

    :param sentinels: ``(host, port)`` of each sentinel.
    :param sentinel_password: the sentinels' own password, if they have one.
    """

    def __init__(
        self,
        sentinels: Sequence[tuple[str, int]],
        master: str,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        db: int = 0,
    ) -> None:
        self.sentinels = tuple(sentinels)
        self.master = master
        self._password = password
        self._sentinel_password = sentinel_password
        self.db = db
        nodes = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        self.address = f"sentinel://{nodes}/{quote(master, safe='')}/{db}"
        self._pools: deque[SentinelConnectionPool] = deque(maxlen=4)  # the latest know the master

    def _sentinel(self, options: dict[str, Any]) -> Sentinel:
        timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
        return Sentinel(
            list(self.sentinels),
            sentinel_kwargs={**timeouts, "password": self._sentinel_password},
            **timeouts,
        )

    def _master_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {
            **options,
            "password": self._password,
            "db": self.db,
            "connection_class": _MasterConnection,
            "is_master": True,
            "check_connection": False,
        }

    def pool(self, **options: Any) -> redis.ConnectionPool:
        pool = SentinelConnectionPool(self.master, self._sentinel(options), **self._master_options(options))
        self._pools.append(pool)
        return pool

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(connection_pool=self.pool(**options))

    def in_use(self) -> str | None:
        """The master's ``host:port`` as the sentinels last named it to this bus."""
        for pool in reversed(self._pools):
            address = pool.master_address
            if address is not None:
                host, port = address
                return f"{host}:{port}"
        return None

    def __repr__(self) -> str:
        return f"SentinelMaster({self.address!r})"
