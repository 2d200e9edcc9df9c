"""The Redis backend's options: where Redis is, and how each delivery behaves.

Each group of options is a frozen attrs class holding the defaults and the
rules (see :mod:`nekobot_bus._options`). A bus's constructor builds them from
its keyword arguments; :func:`read_config` builds them from a config's
``bus`` section (and the Go gateway's ``redis`` section), rejecting any key
that the chosen delivery does not use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs

from ... import codec
from ..._options import (
    DispatchOptions,
    as_float,
    dispatch_options,
    flag,
    integer,
    keys_of,
    seconds,
    section,
    split_section,
    structure,
    text,
)
from ..._urls import redact
from ...dispatch import DEFAULT_INTAKE_BYTES
from ...errors import ConfigError
from .keyspace import DEFAULT_PREFIX, Keyspace
from .topology import ClusterNodes, SentinelMaster, Server, Standalone

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_URL",
    "Address",
    "ConnectionOptions",
    "FanoutOptions",
    "QueueOptions",
    "RedisConfig",
    "read_config",
]

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_GROUP = "nekobot"


def _seconds(default: float, minimum: float = 0.0) -> Any:
    return attrs.field(default=default, converter=as_float, validator=seconds(minimum))


@attrs.frozen(kw_only=True)
class ConnectionOptions:
    """How both deliveries talk to Redis.

    :param prefix: what every key and channel name starts with.
    :param socket_timeout: seconds a command may wait for its reply.
    :param socket_connect_timeout: seconds a connection attempt may take.
    :param max_message_size: largest payload sent or accepted, in bytes.
    :param health_check_timeout: seconds the reader may hear nothing (a PING
        unanswered, a blocking read overdue) before it declares the link dead.
    """

    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=text())
    socket_timeout: float = _seconds(5.0, 0.01)
    socket_connect_timeout: float = _seconds(2.0, 0.01)
    max_message_size: int = attrs.field(default=codec.DEFAULT_MAX_SIZE, validator=integer(1024))
    health_check_timeout: float = _seconds(2.0, 0.1)

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.prefix)


@attrs.frozen(kw_only=True)
class FanoutOptions:
    """The fan-out delivery (``delivery: "fanout"``).

    :param health_check_interval: seconds of silence after which the reader sends PING.
    :param raise_on_unrouted: make a send that reached no subscriber raise.
    :param group: processes with the same group share the work: each
        message is handled by one of them (the first to claim its id in
        Redis), at most once; ``None``: every process handles every message.
    :param claim_window: seconds a claim lives in Redis; a member that
        receives the message later than that (after a backlog that long)
        handles it again.
    :param intake_bytes: what the reader may hold in memory for busy workers
        (payload plus 512 bytes a message) before it drops, and counts, one.
    """

    health_check_interval: float = _seconds(1.0, 0.05)
    raise_on_unrouted: bool = attrs.field(default=False, validator=flag)
    group: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    claim_window: float = _seconds(300.0, 1.0)
    intake_bytes: int = attrs.field(default=DEFAULT_INTAKE_BYTES, validator=integer(1))


@attrs.frozen(kw_only=True)
class QueueOptions:
    """The queue delivery (``delivery: "queue"``); see :class:`~nekobot_bus.backends.redis.RedisStreamBus`."""

    group: str = attrs.field(default=DEFAULT_GROUP, validator=text(empty=False))
    consumer: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    claim_idle: float = _seconds(30.0, 0.05)
    max_deliveries: int = attrs.field(default=5, validator=integer(1))
    retry_backoff: float = _seconds(0.5)
    dedup_window: float = _seconds(0.0)
    max_len: int = attrs.field(default=100_000, validator=integer(1))
    shards: int = attrs.field(default=0, validator=integer(0))
    min_replicas_ack: int = attrs.field(default=0, validator=integer(0))


def _addresses(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(
            f'bus.{attribute.name} must be a non-empty list of "host:port" strings, not {value!r}'
        )
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f'bus.{attribute.name} must hold "host:port" strings, not {item!r}')
        checked_addr(item, f"bus.{attribute.name}")


@attrs.frozen(kw_only=True)
class Address:
    """Where Redis is, as a config gives it: a URL; the Go gateway's address, password and db; or
    the sentinels that know the master (the password and db then apply to the master)."""

    redis_url: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    redis_addr: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    redis_password: str | None = attrs.field(
        default=None, repr=False, validator=attrs.validators.optional(text())
    )
    redis_db: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer(0)))
    redis_sentinels: list[str] | None = attrs.field(default=None, validator=_addresses)
    redis_sentinel_master: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(text(empty=False))
    )
    redis_sentinel_password: str | None = attrs.field(
        default=None, repr=False, validator=attrs.validators.optional(text())
    )
    redis_cluster_nodes: list[str] | None = attrs.field(default=None, validator=_addresses)
    cluster_pubsub: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(text(empty=False))
    )

    def server(self) -> Server:
        """The :class:`~.topology.Server` these keys describe.

        :raises ConfigError: naming the keys that exclude each other or are missing.
        """
        if self.redis_cluster_nodes is not None:
            return self._cluster()
        if self.cluster_pubsub is not None:
            raise ConfigError(
                "bus.cluster_pubsub needs bus.redis_cluster_nodes: it says how a cluster carries pub/sub"
            )
        if self.redis_sentinels is None:
            if self.redis_sentinel_master is not None or self.redis_sentinel_password is not None:
                raise ConfigError(
                    "bus.redis_sentinel_master and bus.redis_sentinel_password need bus.redis_sentinels"
                )
            return Standalone(self.url())
        if self.redis_url is not None or self.redis_addr is not None:
            raise ConfigError(
                "bus.redis_sentinels excludes bus.redis_url and bus.redis_addr: the sentinels name the master"
            )
        if self.redis_sentinel_master is None:
            raise ConfigError(
                "bus.redis_sentinels needs bus.redis_sentinel_master, the name the sentinels monitor"
            )
        return SentinelMaster(
            [_host_port(node, 26379) for node in self.redis_sentinels],
            self.redis_sentinel_master,
            password=self.redis_password,
            sentinel_password=self.redis_sentinel_password,
            db=self.redis_db or 0,
        )

    def _cluster(self) -> ClusterNodes:
        assert self.redis_cluster_nodes is not None
        others = [
            key
            for key in (
                "redis_url",
                "redis_addr",
                "redis_sentinels",
                "redis_sentinel_master",
                "redis_sentinel_password",
            )
            if getattr(self, key) is not None
        ]
        if others:
            raise ConfigError(
                f"bus.redis_cluster_nodes excludes {', '.join('bus.' + k for k in others)}: "
                "the cluster's nodes are where Redis is"
            )
        if self.redis_db:
            raise ConfigError(
                "bus.redis_db must be 0 with bus.redis_cluster_nodes (a cluster has one database), "
                f"not {self.redis_db}"
            )
        pubsub = self.cluster_pubsub or "sharded"
        if pubsub not in ("sharded", "global"):
            raise ConfigError(f"bus.cluster_pubsub must be one of 'sharded', 'global', not {pubsub!r}")
        return ClusterNodes(
            [_host_port(node, 6379) for node in self.redis_cluster_nodes],
            password=self.redis_password,
            pubsub=pubsub,
        )

    def url(self) -> str:
        """The ``redis://`` URL, password included (never show it: :func:`.client.redact`).

        :raises ConfigError: naming the key and the rule, for an address or
            URL that is not one (a scheme in ``redis_addr``, a bad port, a
            database that is not a number ...).
        """
        if self.redis_url is not None:
            if (self.redis_addr, self.redis_password, self.redis_db) != (None, None, None):
                raise ConfigError(
                    "bus.redis_url and bus.redis_addr/redis_password/redis_db exclude each other"
                )
            return checked_url(self.redis_url, "bus.redis_url")
        addr = checked_addr(self.redis_addr or "localhost:6379", "bus.redis_addr")
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{addr}/{self.redis_db or 0}"


URL_SCHEMES = ("redis", "rediss", "unix")


def _host_port(node: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of a checked ``host[:port]``, IPv6 brackets removed."""
    parts = urlsplit(f"redis://{node}")
    return parts.hostname or "localhost", parts.port or default_port


def checked_addr(addr: str, key: str) -> str:
    """*addr*, ``host:port`` (or ``host``, or ``[v6]:port``), checked; *key* names it in the error."""
    if "://" in addr:
        raise ConfigError(
            f"{key} is host:port, like 'localhost:6379', not a URL: {redact(addr)!r}; "
            "give a URL as bus.redis_url (or --redis-url) instead"
        )
    if "/" in addr or "@" in addr:
        raise ConfigError(f"{key} is host:port, like 'localhost:6379', not {_without_scheme(addr)!r}")
    _port_of(urlsplit(f"redis://{addr}"), key, addr)
    return addr


def checked_url(url: str, key: str) -> str:
    """*url*, a ``redis://``, ``rediss://`` or ``unix://`` URL, checked; *key* names it in the error."""
    if "://" not in url:
        shown = _without_scheme(url)
        raise ConfigError(
            f"{key} must be a URL such as 'redis://localhost:6379/0', not {shown!r} (no scheme)"
        )
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise ConfigError(
            f"{key} must start with one of {', '.join(s + '://' for s in URL_SCHEMES)}, "
            f"not {parts.scheme + '://'!r}"
        )
    if parts.scheme == "unix":
        return url
    if not parts.hostname:
        raise ConfigError(f"{key} names no host: {redact(url)!r}")
    _port_of(parts, key, redact(url))
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ConfigError(f"{key}: the database in the URL path must be a number, like /0, not /{database}")
    return url


def _without_scheme(value: str) -> str:
    """*value*, an address written without a scheme, as it may be shown: no credentials."""
    return redact(f"x://{value}").removeprefix("x://")


def _port_of(parts: Any, key: str, shown: str) -> None:
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{key}: the port must be a number from 1 to 65535, in {shown!r}") from None
    if port == 0:
        raise ConfigError(f"{key}: the port must be a number from 1 to 65535, in {shown!r}")


@attrs.frozen(kw_only=True)
class _GoRedis:
    """The Go gateway's ``redis`` section, used where ``bus`` does not say."""

    addr: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    password: str | None = attrs.field(default=None, repr=False, validator=attrs.validators.optional(text()))
    db: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer(0)))


@attrs.frozen(kw_only=True)
class RedisConfig:
    """Everything a config says about a Redis bus, checked."""

    delivery: str
    server: Server
    connection: ConnectionOptions
    delivery_options: FanoutOptions | QueueOptions
    dispatch: DispatchOptions


#: Config keys that name a connection option differently; ``prefix`` is the Go gateway's spelling.
_CONFIG_NAMES = {"redis_prefix": "prefix", "prefix": "prefix"}


def read_config(config: Mapping[str, Any]) -> RedisConfig:
    """Read and check the ``bus`` (and Go ``redis``) sections of a Redis bus's config.

    :raises ConfigError: naming the key, the rule and the value; for a key
        the chosen delivery does not use, naming every key it accepts.
    """
    bus = section(config, "bus")
    delivery = bus.get("delivery", "fanout")
    if delivery not in ("fanout", "queue"):
        raise ConfigError(f"bus.delivery must be one of 'fanout', 'queue', not {delivery!r}")
    fanout = delivery == "fanout"
    connection_keys = [k for k in keys_of(ConnectionOptions) if k != "prefix"] + list(_CONFIG_NAMES)
    parts = split_section(
        "bus",
        bus,
        {
            "address": keys_of(Address),
            "connection": connection_keys,
            "delivery": keys_of(FanoutOptions if fanout else QueueOptions),
            "dispatch": DispatchOptions.BUS_KEYS,
        },
        also=("type", "delivery"),
    )
    connection = parts["connection"]
    if "redis_prefix" in connection and "prefix" in connection:
        raise ConfigError("bus.redis_prefix and bus.prefix (the Go gateway's name) exclude each other")
    if "redis_prefix" in connection:
        connection["prefix"] = connection.pop("redis_prefix")
    address = structure(Address, parts["address"], "bus")
    if not fanout and address.cluster_pubsub is not None:
        raise ConfigError("bus.cluster_pubsub is for the fan-out delivery; the queue delivery uses streams")
    go = structure(_GoRedis, section(config, "redis"), "redis")
    if (address.redis_url, address.redis_sentinels, address.redis_cluster_nodes) == (None, None, None):
        address = attrs.evolve(
            address,
            redis_addr=address.redis_addr if address.redis_addr is not None else go.addr,
            redis_password=address.redis_password if address.redis_password is not None else go.password,
            redis_db=address.redis_db if address.redis_db is not None else go.db,
        )
    delivery_options: FanoutOptions | QueueOptions = (
        structure(FanoutOptions, parts["delivery"], "bus")
        if fanout
        else structure(QueueOptions, parts["delivery"], "bus")
    )
    return RedisConfig(
        delivery=delivery,
        server=address.server(),
        connection=structure(ConnectionOptions, connection, "bus"),
        delivery_options=delivery_options,
        dispatch=dispatch_options(config),
    )
