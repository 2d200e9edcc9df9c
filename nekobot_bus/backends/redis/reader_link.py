"""The supervised connection of a Redis reader thread, shared by both deliveries.

:meth:`ReaderLink.run` is the body of the reader thread. It takes a connection
from its own pool, hands it to the delivery's read loop, and on any error
closes it, waits a capped, jittered, growing delay and connects again, for as
long as the bus runs; each reconnect and each failure is counted. Another
thread may call :meth:`ReaderLink.interrupt` to unblock a read stuck on a
paused server.
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
    ) -> None:
        self._pool = pool
        self._address = address
        self._name = name
        self._metrics = metrics
        self._stopping = stopping
        self._conn: Any = None
        #: ``time.time()`` of the current connection, ``None`` while disconnected.
        self.connected_since: float | None = None

    def run(self, read: Callable[[Any], None], after_disconnect: Callable[[], None] = lambda: None) -> None:
        """Call *read* with a fresh connection until the bus stops; reconnect after any error.

        :param after_disconnect: called each time a connection is given up.
        """
        backoff = 0.05
        first = True
        while not self._stopping.is_set():
            try:
                self._read_connection(read, first)
                backoff = 0.05
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._metrics.incr("connection_errors")
                logger.warning(
                    "%s at %s lost its connection (%s); reconnecting", self._name, self._address, exc
                )
            finally:
                self.connected_since = None
                after_disconnect()
            if self._stopping.wait(backoff * random.uniform(0.5, 1.0)):
                break
            backoff = min(backoff * 2, 5.0)
            self._metrics.incr("reconnects")
            first = False

    def _read_connection(self, read: Callable[[Any], None], first: bool) -> None:
        conn = take_connection(self._pool)
        try:
            self._conn = conn
            self.connected_since = time.time()
            if not first:
                logger.info("%s reconnected to %s", self._name, self._address)
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
