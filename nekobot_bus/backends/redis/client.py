"""Talking to Redis: the client, the command runner, scripts, the address shown, PING.

Sending is the same for pub/sub and streams: commands go out as one pipeline
on a pooled connection, in the caller's thread. Connecting is retried with
capped, jittered backoff until ``send_timeout``; once the commands were
written nothing is retried, because Redis may already have executed them.

A blip is ridden out, an outage is not waited out again and again: the
senders and the reader of a bus share one :class:`Reachability`, and once
Redis has been unreachable for longer than ``send_timeout`` a send makes one
connect attempt and raises at once, until a connection succeeds. So a web
request on a server whose Redis is gone fails after one connect attempt
(milliseconds when the connection is refused, ``socket_connect_timeout``
when packets are dropped) instead of holding its thread for ``send_timeout``.

An error reply is an error: :meth:`CommandRunner.run` raises
:class:`~nekobot_bus.BusReplyError` for it, unless the caller named its code
(``BUSYGROUP``, ``NOGROUP`` ...) as one it handles; then the reply comes
back as the exception, in its place.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._urls import redact
from ...errors import BusConnectionError, BusReplyError, ConfigError
from ...metrics import Metrics
from ..start_hold import NothingSent
from .compat import error_code, take_connection

if TYPE_CHECKING:
    from .topology import Server

__all__ = [
    "REDIS_ERRORS",
    "CommandRunner",
    "Reachability",
    "RedisUnreachable",
    "Script",
    "check_reachable",
    "client_options",
    "error_code",
    "make_client",
    "redact",
]

#: What a broken or unreachable connection raises.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def check_reachable(server: str | Server, *, timeout: float = 2.0) -> None:
    """Return when *server* (a URL, or a :class:`~.topology.Server`) answers a PING within *timeout*;
    else say why, without the password.

    :raises ConfigError: it is not a usable address, or names a database
        the server does not have.
    :raises BusConnectionError: nothing answers there, or the server refused
        the credentials.
    """
    from .topology import Standalone  # noqa: PLC0415 - topology builds on this module

    if isinstance(server, str):
        server = Standalone(server)
    address = server.address
    client = server.client(socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise BusConnectionError(
            f"Redis at {address} refused the credentials: authentication failed ({exc})"
        ) from None
    except redis.ResponseError as exc:
        if "DB index is out of range" in str(exc):
            raise ConfigError(
                f"Redis at {address} has no database {_database(address)}: {exc} "
                "(its 'databases' setting bounds the number)"
            ) from None
        if error_code(exc) in ("NOAUTH", "NOPERM", "WRONGPASS"):
            raise BusConnectionError(
                f"Redis at {address} refused the credentials: authentication failed ({exc})"
            ) from None
        raise BusReplyError(f"Redis at {address} refused PING: {exc}") from None
    except (redis.RedisError, OSError) as exc:
        hint = (
            f"; is it running? e.g. redis-server --port {server.port} --daemonize yes"
            if server.port is not None
            else "; are the sentinels running, and do they know the master?"
        )
        raise BusConnectionError(f"Redis at {address} does not answer ({exc}){hint}") from None
    finally:
        client.close()


def _database(address: str) -> str:
    """The database in a shown address: the last part of its path (``sentinel://.../master/2`` too)."""
    return urlsplit(address).path.strip("/").rsplit("/", 1)[-1] or "0"


def client_options(
    redis_options: Mapping[str, Any] | None, *, socket_timeout: float, socket_connect_timeout: float
) -> dict[str, Any]:
    """redis-py options: the timeouts, *redis_options* (``ssl_*`` ...), and redis-py's own retries off.

    Our code decides when to retry: redis-py's retries would re-send a
    command that may already have run, and would hide outages.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
    }
    options.update(redis_options or {})
    options["retry"] = Retry(NoBackoff(), 0)
    return options


class Script:
    """A Lua script, called by its digest (``EVALSHA``); the runner loads it when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The command that runs the script on *keys* and *args*."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


def make_client(url: str, address: str, **options: Any) -> redis.Redis:
    """A client for *url*; a URL redis-py refuses is a :class:`ConfigError` naming *address*."""
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"redis url {address!r} is not usable: {exc}") from None


class Backoff:
    """The waits between retries until a deadline: jittered, doubling from *first* up to *cap*."""

    def __init__(self, deadline: float, first: float, cap: float) -> None:
        self.deadline = deadline
        self._delay = first
        self._cap = cap

    def wait(self) -> bool:
        """Sleep the next wait and return ``True``; ``False`` (at once) when it would pass the deadline."""
        if time.monotonic() + self._delay > self.deadline:
            return False
        time.sleep(self._delay * random.uniform(0.5, 1.0))
        self._delay = min(self._delay * 2, self._cap)
        return True


class RedisUnreachable(NothingSent):
    """No connection could be made: nothing was sent (unlike a connection that broke after writing)."""


class Reachability:
    """Since when Redis has been unreachable, as the senders and the reader of one bus found it.

    Thread-safe: each method assigns one attribute, and a race between a
    failure and a success found at the same moment settles either way.
    """

    #: Seconds without a failure after which a new failure starts a new outage
    #: (the reader tries again at least this often while Redis is away: a
    #: capped 5 s wait plus a connect timeout).
    QUIET = 10.0

    def __init__(self) -> None:
        self._down_since: float | None = None
        self._last_failure = 0.0

    def failed(self) -> None:
        """A connection could not be made, or broke."""
        now = time.monotonic()
        if self._down_since is None or now - self._last_failure > self.QUIET:
            self._down_since = now  # a failure long after the last one: not the same outage
        self._last_failure = now

    def reached(self) -> None:
        """A connection was made."""
        self._down_since = None

    def down_for(self) -> float:
        """Seconds since Redis was first found unreachable in the current outage; 0 when reachable."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since


class CommandRunner:
    """Runs command pipelines on *client*'s pool for one bus. Thread-safe.

    :param address: the redacted address, for errors.
    :param timeout: how long connecting is retried; ``None``: 30 s.
    :param reachability: shared with the bus's reader; a new one if not given.
    """

    def __init__(
        self,
        client: redis.Redis,
        address: str,
        metrics: Metrics,
        timeout: float | None,
        reachability: Reachability | None = None,
    ) -> None:
        self.client = client
        self.address = address
        self._metrics = metrics
        self._timeout = 30.0 if timeout is None else timeout
        self.reachability = reachability or Reachability()
        self._scripts: dict[str, str] = {}  # by digest, for NOSCRIPT
        self._scripts_lock = threading.Lock()

    def close(self) -> None:
        """Close the client's connections; a later command opens new ones."""
        self.client.close()

    def script(self, source: str) -> Script:
        """A :class:`Script` this runner loads into Redis when Redis answers ``NOSCRIPT``."""
        script = Script(source)
        with self._scripts_lock:
            self._scripts[script.sha] = source
        return script

    def run(
        self,
        commands: Sequence[tuple[Any, ...]],
        what: str,
        *,
        timeout: float | None = None,
        allow: Collection[str] = (),
    ) -> list[Any]:
        """Send *commands* in one round trip; return their replies.

        A script Redis does not know yet (after a restart or a failover) is
        loaded and its calls are sent again: ``NOSCRIPT`` means it did not run.
        Commands a demoted master refused with ``READONLY`` (they did not run)
        are sent again, to the master the next connection finds, until the
        timeout: the whole round trip when none of it ran, else only those.

        :param what: what the commands do, for the error, e.g. ``"publishing 3 messages"``.
        :param timeout: how long to retry connecting, instead of the runner's own.
        :param allow: error codes the caller handles: their replies are
            returned as :class:`redis.ResponseError` in place of a value.
        :raises BusReplyError: Redis answered a command with an error not in
            *allow* (the other commands of the round trip did run).
        :raises BusConnectionError: Redis was unreachable for the timeout (nothing
            was sent), or the connection broke after writing (some commands may
            have run).
        """
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        backoff = None
        while True:
            replies = self._with_scripts(commands, what, timeout)
            if not _any_error(replies):  # nearly every round trip: nothing more to look at
                return replies
            refused = [i for i, reply in enumerate(replies) if error_code(reply) == "READONLY"]
            if not refused:
                break
            # READONLY: a demoted master (a failover) refused the write, which did
            # not run; the connection was dropped, so the next asks for the new one.
            self._metrics.incr("connection_errors")
            self.reachability.failed()
            backoff = backoff or Backoff(deadline, first=0.05, cap=1.0)
            if not backoff.wait():
                raise RedisUnreachable(
                    f"Redis at {self.address} answered READONLY (a replica, not the master) while "
                    f"{what}, until the deadline; nothing was written"
                )
            if all(isinstance(reply, redis.ResponseError) for reply in replies):
                # Nothing ran (a WAIT after refused writes fails too): send it all again.
                timeout = max(0.0, deadline - time.monotonic())
                continue
            # Some commands ran on the replica (reads): only the refused ones go again.
            again = self.run(
                [commands[i] for i in refused],
                what,
                timeout=max(0.0, deadline - time.monotonic()),
                allow=allow,
            )
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
            break
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, redis.ResponseError) and error_code(reply) not in allow:
                raise BusReplyError(f"Redis at {self.address} refused {command[0]} while {what}: {reply}")
        return replies

    def _with_scripts(
        self, commands: Sequence[tuple[Any, ...]], what: str, timeout: float | None
    ) -> list[Any]:
        """One round trip; a script Redis lacks (``NOSCRIPT``: it did not run) is loaded and called again."""
        replies = self._round_trip(commands, what, timeout)
        if not _any_error(replies):
            return replies
        missing = [i for i, reply in enumerate(replies) if error_code(reply) == "NOSCRIPT"]
        if missing:
            with self._scripts_lock:
                loads = [("SCRIPT", "LOAD", self._scripts[commands[i][1]]) for i in missing]
            again = self._round_trip([*loads, *(commands[i] for i in missing)], what, timeout)
            for i, reply in zip(missing, again[len(loads) :], strict=True):
                replies[i] = reply
        return replies

    def _round_trip(self, commands: Sequence[tuple[Any, ...]], what: str, timeout: float | None) -> list[Any]:
        pool = self.client.connection_pool
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        backoff = None
        while True:
            try:
                conn = take_connection(pool)
            except redis.AuthenticationError as exc:  # a wrong password does not fix itself: at once
                self._metrics.incr("connection_errors")
                raise BusConnectionError(
                    f"Redis at {self.address} refused the credentials: authentication failed ({exc}); "
                    "nothing was sent"
                ) from None
            except redis.ResponseError as exc:  # the connection's setup was refused: SELECT of a missing db
                raise ConfigError(f"Redis at {self.address} refused the connection: {exc}") from None
            except REDIS_ERRORS as exc:
                self._metrics.incr("connection_errors")
                self.reachability.failed()
                down = self.reachability.down_for()
                if down > limit:  # an outage, not a blip: do not make every caller wait it out
                    raise RedisUnreachable(
                        f"Redis at {self.address} has been unreachable for {down:.1f} s while {what}: "
                        f"{exc}; nothing was sent"
                    ) from exc
                backoff = backoff or Backoff(deadline, first=0.05, cap=1.0)
                if not backoff.wait():
                    raise RedisUnreachable(
                        f"Redis at {self.address} unreachable for {limit} s while {what}: {exc}; "
                        "nothing was sent"
                    ) from exc
                continue
            self.reachability.reached()
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                replies = [_reply(conn) for _ in commands]
                if _any_error(replies) and any(error_code(reply) == "READONLY" for reply in replies):
                    conn.disconnect()  # a demoted master: the next connection asks for the new one
                return replies
            except REDIS_ERRORS as exc:
                self._metrics.incr("connection_errors")
                self.reachability.failed()
                conn.disconnect()
                raise BusConnectionError(
                    f"connection to Redis at {self.address} broke while {what}; "
                    f"it may or may not have been done: {exc}"
                ) from exc
            finally:
                pool.release(conn)


def _any_error(replies: list[Any]) -> bool:
    """Whether any of *replies* is an error reply."""
    return any(isinstance(reply, redis.ResponseError) for reply in replies)


def _reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc
