"""The few parts of redis-py the Redis backends use, on every release they support.

The backends speak to redis-py's :class:`~redis.Connection` directly (the
reader reads its own RESP2 connection), so only three things differ between
the releases declared in ``setup.cfg``:

- ``ConnectionPool.get_connection()`` needs a command name before 5.3 and
  warns about one from 5.3 on;
- ``Connection.read_response(timeout=...)`` exists only in newer releases;
  before, a read waits for data with ``can_read(timeout)``, which with
  hiredis (a required part of the ``redis`` extra) keeps a reply split by the
  timeout in the parser, just as the newer path does;
- error replies: redis-py strips the code of some (``NOSCRIPT``,
  ``EXECABORT``, ``ERR`` ...) and turns them into exception classes, and
  only newer releases keep the code in ``status_code``; :func:`error_code`
  gives it back on each;
- releases older than :data:`MINIMUM` lack what both need, and are refused
  with a :class:`~nekobot_bus.ConfigError` at import instead of a reader
  that fails in a loop.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import redis
import redis.connection
import redis.exceptions

from ...errors import ConfigError

__all__ = ["INSTALLED", "MINIMUM", "check_version", "error_code", "read_reply", "take_connection"]

#: The oldest redis-py release the backends support (and ``setup.cfg`` declares).
MINIMUM = (5, 0, 0)

INSTALLED: str = getattr(redis, "__version__", "unknown")


def check_version(installed: str) -> None:
    """Raise :class:`ConfigError` if redis-py *installed* is older than :data:`MINIMUM`."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", installed)[:3])
    if len(numbers) < 2 or numbers < MINIMUM:
        need = ".".join(map(str, MINIMUM))
        raise ConfigError(
            f"the Redis backends need redis-py >= {need}, but redis-py {installed} is installed; "
            f"upgrade it with: pip install 'redis>={need}'"
        )


check_version(INSTALLED)


def _pool_wants_command_name() -> bool:
    name = inspect.signature(redis.ConnectionPool.get_connection).parameters.get("command_name")
    return name is not None and name.default is inspect.Parameter.empty


_POOL_WANTS_COMMAND_NAME = _pool_wants_command_name()
_READ_TAKES_TIMEOUT = "timeout" in inspect.signature(redis.connection.Connection.read_response).parameters


def take_connection(pool: redis.ConnectionPool) -> Any:
    """A connection from *pool*, connected; give it back with ``pool.release()``."""
    if _POOL_WANTS_COMMAND_NAME:
        return pool.get_connection("_")
    return pool.get_connection()


def read_reply(conn: Any, timeout: float) -> Any:
    """The next reply on *conn*, waiting at most *timeout* seconds for it to start.

    A reply split by the timeout is kept by the parser and completed by the
    next call; the connection stays open.

    :raises redis.TimeoutError: nothing arrived within *timeout*.
    """
    if _READ_TAKES_TIMEOUT:
        return conn.read_response(timeout=timeout, disconnect_on_error=False)
    if not conn.can_read(timeout=timeout):
        raise redis.TimeoutError(f"no reply within {timeout} s")
    return conn.read_response(disconnect_on_error=False)


# The codes redis-py turns into classes, stripping them from the text; "ERR" is stripped into a plain one.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
    (redis.exceptions.ExecAbortError, "EXECABORT"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.MovedError, "MOVED"),  # before ASK: a MovedError is an AskError
    (redis.exceptions.AskError, "ASK"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)


def error_code(reply: object) -> str:
    """The code of an error reply (``"NOGROUP"``, ``"NOSCRIPT"``, ``"ERR"``); ``""`` for other replies."""
    if not isinstance(reply, redis.ResponseError):
        return ""
    status = getattr(reply, "status_code", None)
    if isinstance(status, str) and status:
        return status
    for cls, code in _CODES:
        if isinstance(reply, cls):
            return code
    first = str(reply).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else "ERR"
