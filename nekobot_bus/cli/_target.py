"""Which Redis bus a command talks to: ``--config`` or ``--redis-url``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .._options import section
from ..config import check_sections, load_config
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..backends.redis.keyspace import Keyspace
    from ..backends.redis.topology import Server

__all__ = ["RedisTarget", "add_target_arguments", "config_from", "ensure_reachable", "redis_target"]


class RedisTarget(NamedTuple):
    server: Server
    keys: Keyspace
    delivery: str
    shards: int


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the bus config of your processes (JSON text or file)")
    where.add_argument("--redis-url", help="instead of --config: redis://host:port/db, fan-out delivery")


def config_from(args: argparse.Namespace) -> Mapping[str, Any]:
    """The config the command works on; it must name a Redis bus."""
    if args.redis_url:
        from ..backends.redis.options import checked_url  # noqa: PLC0415 - the redis extra

        return {"bus": {"type": "redis", "redis_url": checked_url(args.redis_url, "--redis-url")}}
    config = load_config(args.config)
    check_sections(config)
    kind = section(config, "bus").get("type", "local")
    if kind != "redis":
        raise ConfigError(
            f"bus.type is {kind!r}: this command watches or sends between processes, which needs a "
            "Redis bus (a local bus lives inside one process)"
        )
    return config


def redis_target(config: Mapping[str, Any]) -> RedisTarget:
    """The server, prefix, delivery and shards a Redis config names (without building a bus)."""
    from ..backends.redis.options import QueueOptions, read_config  # noqa: PLC0415 - the redis extra
    from ..backends.redis.topology import ClusterNodes  # noqa: PLC0415

    checked = read_config(config)
    options = checked.delivery_options
    shards = options.shards if isinstance(options, QueueOptions) else 0
    keys = checked.connection.keyspace
    if checked.delivery == "queue" and isinstance(checked.server, ClusterNodes):
        keys = keys.in_one_slot()  # as the queue delivery names them on a cluster
    return RedisTarget(checked.server, keys, checked.delivery, shards)


def ensure_reachable(target: RedisTarget) -> None:
    """Fail at once, naming the address (never the password) and the reason, when Redis does not answer.

    :raises ConfigError: the database named does not exist there.
    :raises BusConnectionError: nothing answers, or the credentials were refused.
    """
    from ..backends.redis.client import check_reachable  # noqa: PLC0415 - needs the redis extra

    check_reachable(target.server)
