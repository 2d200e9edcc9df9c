"""The supervised connection of a Redis reader thread, shared by both deliveries.

:meth:`ReaderLink.run` is the body of the reader thread. It takes a connection
from its own pool, hands it to the delivery's read loop, and on any error
closes it, waits a capped, jittered, growing delay and connects again, for as
long as the bus runs; each reconnect and each failure is counted. Another
thread may call :meth:`ReaderLink.interrupt` to unblock a read stuck on a
paused server.

The log tells an outage once: a warning when a connection is lost (or the
first one cannot be made), saying why; then nothing while the retries fail,
and one line when a connection is made again. What it finds is noted in the
bus's :class:`~.client.Reachability`, which its senders share.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ...metrics import Metrics
from .client import Reachability
from .compat import take_connection

__all__ = ["ReaderLink"]

logger = logging.getLogger("nekobot_bus.redis")


class ReaderLink:
    """The reader thread's connection and its reconnect loop.

    :param name: how logs call the reader, e.g. ``"Redis reader"``.
    """

    def __init__(
        self,
        pool: redis.ConnectionPool,
        *,
        address: str,
        name: str,
        metrics: Metrics,
        stopping: threading.Event,
        reachability: Reachability,
    ) -> None:
        self._pool = pool
        self._address = address
        self._name = name
        self._metrics = metrics
        self._stopping = stopping
        self._reachability = reachability
        self._conn: Any = None
        self._outage_told = False  # the current outage is in the log
        self._last_told = ""  # the last error the log told, not told again in a row
        #: Why the last connection failed or broke; ``None`` while connected.
        self.last_error: str | None = None
        #: Set while ``start()`` waits for this link: the error it raises tells a
        #: failure to connect, so the log does not say it a second time.
        self.starting = False
        #: ``time.time()`` of the current connection, ``None`` while disconnected.
        self.connected_since: float | None = None

    def run(self, read: Callable[[Any], None], after_disconnect: Callable[[], None] = lambda: None) -> None:
        """Call *read* with a fresh connection until the bus stops; reconnect after any error.

        :param after_disconnect: called each time a connection is given up.
        """
        backoff = 0.05
        ever_connected = False
        while not self._stopping.is_set():
            connected = False
            try:
                conn = take_connection(self._pool)
                connected = True
                self._read_connection(conn, read, ever_connected)
                ever_connected = True
                backoff = 0.05
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._metrics.incr("connection_errors")
                self._reachability.failed()
                self._tell_outage(exc, connected=connected, ever_connected=ever_connected)
                ever_connected = ever_connected or connected
            finally:
                self.connected_since = None
                after_disconnect()
            if self._stopping.wait(backoff * random.uniform(0.5, 1.0)):
                break
            backoff = min(backoff * 2, 5.0)
            self._metrics.incr("reconnects")

    def _tell_outage(self, exc: Exception, *, connected: bool, ever_connected: bool) -> None:
        repeated = str(exc) == self._last_told  # the same refusal again (a replica's READONLY ...)
        self.last_error = str(exc)
        if self._outage_told or repeated or (self.starting and not ever_connected):
            logger.debug("%s: Redis at %s still unreachable: %s", self._name, self._address, exc)
            return
        self._outage_told = True
        self._last_told = str(exc)
        what = "lost its connection to" if connected or ever_connected else "could not connect to"
        logger.warning(
            "%s %s Redis at %s (%s); retrying with backoff until it answers",
            self._name,
            what,
            self._address,
            exc,
        )

    def _read_connection(self, conn: Any, read: Callable[[Any], None], ever_connected: bool) -> None:
        try:
            self._conn = conn
            self.connected_since = time.time()
            self._reachability.reached()
            self.last_error = None
            if self._outage_told or ever_connected:
                logger.info("%s reconnected to Redis at %s", self._name, self._address)
            self._outage_told = False
            read(conn)
        finally:
            self._conn = None
            conn.disconnect()
            self._pool.release(conn)

    def interrupt(self) -> None:
        """Shut the connection's socket down: unblocks a reader stuck on a paused server."""
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._pool.disconnect()
