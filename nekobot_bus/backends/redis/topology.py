"""Where a bus's Redis is: one server by URL, the master a set of Sentinels names, or a Cluster.

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
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import redis
from redis.connection import Connection
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from ...errors import ConfigError
from ...metrics import Metrics
from .client import CommandRunner, Reachability, RedisUnreachable, make_client, redact
from .cluster import ClusterRunner, Node, SlotMap

__all__ = ["ClusterNodes", "SentinelMaster", "Server", "Standalone"]


class Server(abc.ABC):
    """A Redis the bus talks to; the options are redis-py's connection options."""

    #: How logs, errors and ``repr()`` show it: never with a password.
    address: str
    #: Whether ``PUBLISH`` answers how many subscribers got the message; on a
    #: cluster it counts only those connected to the node it ran on.
    counts_receivers = True

    @abc.abstractmethod
    def client(self, **options: Any) -> redis.Redis:
        """A client for commands, on a pool of its own."""

    @abc.abstractmethod
    def pool(self, **options: Any) -> redis.ConnectionPool:
        """A pool for a reader's connection."""

    def runner(
        self, metrics: Metrics, timeout: float | None, reachability: Reachability, **options: Any
    ) -> CommandRunner:
        """The command runner of a bus's senders, on a client of its own."""
        return CommandRunner(self.client(**options), self.address, metrics, timeout, reachability)

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


class _NodeRing:
    """The nodes of a cluster, the one in use first. Thread-safe.

    Every connection of a bus goes to the same node while it answers: two
    messages one thread publishes through two nodes could reach a
    subscriber in the wrong order.
    """

    def __init__(self, nodes: Sequence[tuple[str, int]]) -> None:
        self.nodes = tuple(nodes)
        self._lock = threading.Lock()
        self._first = 0
        self.last: tuple[str, int] | None = None

    def in_use(self) -> tuple[str, int]:
        """The node connections go to now."""
        with self._lock:
            return self.nodes[self._first]

    def in_turn(self) -> list[tuple[str, int]]:
        """Every node once, the one in use first."""
        with self._lock:
            first = self._first
        return [*self.nodes[first:], *self.nodes[:first]]

    def use(self, node: tuple[str, int]) -> None:
        """*node* took a connection: the next ones go there too."""
        with self._lock:
            self._first = self.nodes.index(node)
            self.last = node

    def failed(self, node: tuple[str, int]) -> None:
        """A connection to *node* could not be set up: the next ones try the node after it."""
        with self._lock:
            if self.nodes[self._first] == node:
                self._first = (self._first + 1) % len(self.nodes)


class _AnyNodeConnection(Connection):
    """A connection to the first node of its ring that takes one and answers its greeting.

    A node that accepts the connection but does not answer (a paused
    process) fails the greeting after ``socket_timeout``; the next
    connection then tries the node after it.
    """

    def __init__(self, *, ring: _NodeRing, follow: bool = False, **options: Any) -> None:
        self._ring = ring
        self._follow = follow
        host, port = ring.nodes[0]
        super().__init__(host=host, port=port, **options)

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        # A sender's pooled connection follows the ring to the node in use, so that one
        # thread's messages do not travel through two nodes; a reader's stays where it is
        # subscribed until it breaks.
        if (
            self._follow
            and getattr(self, "_sock", None) is not None
            and (self.host, self.port) != self._ring.in_use()
        ):
            self.disconnect()
        super().send_packed_command(*args, **kwargs)

    def _connect(self) -> Any:
        refused: list[str] = []
        for host, port in self._ring.in_turn():
            self.host, self.port = host, port
            try:
                return super()._connect()
            except OSError as exc:
                self._ring.failed((host, port))
                refused.append(f"{host}:{port}: {exc}")
        raise OSError(f"no cluster node accepted a connection ({'; '.join(refused)})")

    def _connect_noting(self, connect: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_sock", None) is not None:  # connected already: nothing to note
            return
        try:
            connect(*args, **kwargs)
        except Exception:
            self._ring.failed((self.host, self.port))
            raise
        self._ring.use((self.host, self.port))

    # Newer redis-py connects through connect_check_health (connect() calls
    # it, and so does a command on a closed connection); 5.0 through connect().
    if hasattr(Connection, "connect_check_health"):

        def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
            self._connect_noting(super().connect_check_health, *args, **kwargs)

    else:

        def connect(self, *args: Any, **kwargs: Any) -> None:
            self._connect_noting(super().connect, *args, **kwargs)


class _SlotPrimaryConnection(Connection):
    """A connection to the primary of one key's slot: the cluster is asked where that is before
    each connect (a reconnect follows a failure, often a failover or a moved slot)."""

    def __init__(self, *, slots: SlotMap, key: str, **options: Any) -> None:
        self._slots = slots
        self._key = key
        super().__init__(**options)

    def _connect(self) -> Any:
        with contextlib.suppress(RedisUnreachable):  # then the map it has is the best guess
            self._slots.refresh()
        node = self._slots.primary_of(self._key)
        if node is None:
            raise OSError(f"no primary of the cluster serves the slot of {self._key!r}")
        self.host, self.port = node
        return super()._connect()


#: Seconds one node may take to connect, and to answer ``CLUSTER SLOTS``.
_ASK_SECONDS = 1.0


class ClusterNodes(Server):
    """A Redis Cluster, known by some of its *nodes*; *password* applies to every node.

    :param pubsub: ``"sharded"``: the fan-out uses ``SPUBLISH`` and
        ``SSUBSCRIBE``, and a message stays within the shard that serves its
        channel; ``"global"``: ``PUBLISH`` and ``SUBSCRIBE`` on any node reach
        every subscriber in the cluster, at the price of every message
        crossing every node.
    """

    def __init__(
        self, nodes: Sequence[tuple[str, int]], *, password: str | None = None, pubsub: str = "sharded"
    ) -> None:
        if pubsub not in ("sharded", "global"):
            raise ConfigError(f"bus.cluster_pubsub must be one of 'sharded', 'global', not {pubsub!r}")
        self._ring = _NodeRing(nodes)
        self._password = password
        self.pubsub = pubsub
        #: ``SPUBLISH`` runs on the channel's primary and counts its subscribers, where every bus
        #: subscribes; ``PUBLISH`` counts those of whichever node it ran on.
        self.counts_receivers = pubsub == "sharded"
        self.address = "redis-cluster://" + ",".join(f"{host}:{port}" for host, port in self._ring.nodes)

    def pool(self, **options: Any) -> redis.ConnectionPool:
        return redis.ConnectionPool(
            connection_class=_AnyNodeConnection, ring=self._ring, password=self._password, **options
        )

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(connection_pool=self.pool(follow=True, **options))

    def slot_pool(self, key: str, slots: SlotMap, **options: Any) -> redis.ConnectionPool:
        """A pool of connections to the primary that serves *key*'s slot now, as *slots* says."""
        return redis.ConnectionPool(
            connection_class=_SlotPrimaryConnection, slots=slots, key=key, password=self._password, **options
        )

    def node_pool(self, node: Node, **options: Any) -> redis.ConnectionPool:
        """A pool of connections to *node* alone."""
        return redis.ConnectionPool(host=node[0], port=node[1], password=self._password, **options)

    def node_client(self, node: Node, **options: Any) -> redis.Redis:
        """A client of *node* alone."""
        return redis.Redis(host=node[0], port=node[1], password=self._password, **options)

    def runner(
        self, metrics: Metrics, timeout: float | None, reachability: Reachability, **options: Any
    ) -> ClusterRunner:
        """Keyless commands go to the node in use; keyed ones to the primary of their slot."""

        def runner_for(node: Node) -> CommandRunner:
            address = f"{node[0]}:{node[1]}"
            return CommandRunner(self.node_client(node, **options), address, metrics, None, Reachability())

        return ClusterRunner(
            self.client(**options),
            self.address,
            metrics,
            timeout,
            reachability,
            slots=self.slot_map(**options),
            runner_for=runner_for,
        )

    def slot_map(self, **options: Any) -> SlotMap:
        """A :class:`~.cluster.SlotMap` of this cluster, empty until asked to refresh."""
        # Asking for the map is one small reply: a node that takes longer is not the one to ask.
        asking = options | {
            key: min(float(options.get(key) or _ASK_SECONDS), _ASK_SECONDS)
            for key in ("socket_timeout", "socket_connect_timeout")
        }

        def ask(node: Node) -> Any:
            with self.node_client(node, **asking) as client:
                return client.execute_command("CLUSTER", "SLOTS")

        return SlotMap(self._ring.nodes, ask)

    def in_use(self) -> str | None:
        """The ``host:port`` of the node the last connection was made to."""
        last = self._ring.last
        return None if last is None else f"{last[0]}:{last[1]}"

    def __repr__(self) -> str:
        return f"ClusterNodes({self.address!r})"
