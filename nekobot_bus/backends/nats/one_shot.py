"""One JetStream job over a connection of its own, for a queue bus that is not started yet.

The Redis queue writes a message sent before ``start()`` to its stream at
once; the JetStream queue does the same with :func:`run_once`: it connects,
does the job, and closes, on a thread of its own (the caller may be inside
an event loop of its own), all within a time limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from ...errors import BusConnectionError
from ..start_hold import NothingSent

__all__ = ["run_once"]

Job = Callable[[JetStreamContext], Awaitable[None]]


def run_once(
    servers: list[str], address: str, *, connect_timeout: float, timeout: float, prepare: Job, send: Job
) -> None:
    """Connect, ``prepare`` (make the streams), ``send``, and close, within *timeout* seconds.

    :raises NothingSent: NATS could not be reached, or failed before the send went out.
    :raises BusConnectionError: the send went out and was not confirmed: it may be stored.
    """
    outcome: list[BaseException | None] = []
    sending: list[bool] = []  # once the send went out, a failure may have stored it

    async def quiet(_error: Exception) -> None:
        pass  # the outcome is raised to the sender instead of logged

    async def job() -> None:
        client = Client()
        try:
            settings: dict[str, Any] = {"connect_timeout": connect_timeout}  # nats-py annotates it int
            await client.connect(servers=servers, allow_reconnect=False, error_cb=quiet, **settings)
            js = client.jetstream(timeout=timeout)
            await prepare(js)
            sending.append(True)
            await send(js)
        finally:
            await client.close()

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(job(), timeout))
            outcome.append(None)
        except Exception as exc:  # handed to the caller below
            outcome.append(exc)

    thread = threading.Thread(target=run, name="nekobot-bus-nats-before-start", daemon=True)
    thread.start()
    thread.join()  # bounded by the wait_for above
    error = outcome[0] if outcome else RuntimeError("no outcome")
    if error is None:
        return
    # asyncio's TimeoutError is not the builtin one before Python 3.11.
    timeouts = (TimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError)
    if not sending and isinstance(error, (OSError, nats.errors.NoServersError, *timeouts)):
        raise NothingSent(f"NATS at {address} is not reachable: {error!r}")
    raise BusConnectionError(
        f"NATS at {address} did not confirm storing the message ({error!r}); it may be stored"
    )
