"""What both Redis deliveries share: the config keys, the address shown, and sending commands.

Sending is the same for pub/sub and streams: commands go out as one pipeline
on a pooled connection, in the caller's thread. Connecting is retried with
capped, jittered backoff until ``send_timeout``; once the commands were
written nothing is retried, because Redis may already have executed them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._options import Section
from ...errors import BusConnectionError, ConfigError
from ...metrics import Metrics
from .compat import take_connection

__all__ = [
    "DEFAULT_PREFIX",
    "REDIS_ERRORS",
    "CommandRunner",
    "check_prefix",
    "client_options",
    "connection_config",
    "make_client",
    "ping_problem",
    "redact",
]

DEFAULT_PREFIX = "nekobot:bus:"

#: What a broken or unreachable connection raises.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

_GLOB = set("*?[]\\")


def redact(url: str) -> str:
    """*url* without its password, for ``repr()``, logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username:
        netloc = f"{quote(parts.username)}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def ping_problem(url: str) -> str | None:
    """Why the Redis at *url* does not answer a PING within 2 s, or ``None`` when it does."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        return str(exc)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    finally:
        client.close()
    return None


def check_prefix(prefix: str) -> str:
    """Return *prefix*, or raise if it would turn names into glob patterns."""
    if _GLOB & set(prefix):
        raise ConfigError(f"redis prefix {prefix!r} must not contain glob characters * ? [ ] \\")
    return prefix


def connection_config(bus: Section, go_redis: Section) -> tuple[str, str, dict[str, Any]]:
    """Read the URL, the prefix and redis-py options from ``bus`` (and Go's ``redis`` section).

    :returns: ``(url, prefix, redis_options)``.
    """
    url = bus.text("redis_url", "") if "redis_url" in bus else ""
    if not url:
        addr = bus.text("redis_addr", "") or go_redis.text("addr", "localhost:6379")
        password = bus.text("redis_password", "") or go_redis.text("password", "")
        db = (
            bus.integer("redis_db", 0, minimum=0)
            if "redis_db" in bus
            else go_redis.integer("db", 0, minimum=0)
        )
        auth = f":{quote(password, safe='')}@" if password else ""
        url = f"redis://{auth}{addr}/{db}"
    elif any(key in bus for key in ("redis_addr", "redis_password", "redis_db")):
        raise ConfigError("bus.redis_url and bus.redis_addr/redis_password/redis_db exclude each other")
    prefix = bus.text("redis_prefix", "") or bus.text("prefix", DEFAULT_PREFIX)
    options: dict[str, Any] = {}
    for key in ("socket_timeout", "socket_connect_timeout"):
        if key in bus:
            options[key] = bus.seconds(key)
    return url, prefix, options


def client_options(redis_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """redis-py options with our defaults, and redis-py's own retries off.

    Our code decides when to retry: redis-py's retries would re-send a
    command that may already have run, and would hide outages.
    """
    options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
    options.update(redis_options or {})
    options["retry"] = Retry(NoBackoff(), 0)
    return options


def make_client(url: str, address: str, **options: Any) -> redis.Redis:
    """A client for *url*; a URL redis-py refuses is a :class:`ConfigError` naming *address*."""
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"redis url {address!r} is not usable: {exc}") from None


class CommandRunner:
    """Runs command pipelines on *client*'s pool for one bus. Thread-safe.

    :param address: the redacted address, for errors.
    :param timeout: how long connecting is retried; ``None``: 30 s.
    """

    def __init__(self, client: redis.Redis, address: str, metrics: Metrics, timeout: float | None) -> None:
        self.client = client
        self.address = address
        self._metrics = metrics
        self._timeout = 30.0 if timeout is None else timeout

    def run(
        self, commands: Sequence[tuple[Any, ...]], what: str, *, timeout: float | None = None
    ) -> list[Any]:
        """Send *commands* in one round trip; return each reply, an error reply as its exception.

        :param what: what the commands do, for the error, e.g. ``"publishing 3 messages"``.
        :param timeout: how long to retry connecting, instead of the runner's own.
        :raises BusConnectionError: Redis was unreachable for the timeout (nothing
            was sent), or the connection broke after writing (some commands may
            have run).
        """
        pool = self.client.connection_pool
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.05
        while True:
            try:
                conn = take_connection(pool)
            except REDIS_ERRORS as exc:
                self._metrics.incr("connection_errors")
                if time.monotonic() + delay > deadline:
                    raise BusConnectionError(
                        f"Redis at {self.address} unreachable for {limit} s while {what}: {exc}; "
                        "nothing was sent"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)
                continue
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                return [_reply(conn) for _ in commands]
            except REDIS_ERRORS as exc:
                self._metrics.incr("connection_errors")
                conn.disconnect()
                raise BusConnectionError(
                    f"connection to Redis at {self.address} broke while {what}; "
                    f"it may or may not have been done: {exc}"
                ) from exc
            finally:
                pool.release(conn)


def _reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc
