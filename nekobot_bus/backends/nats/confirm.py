"""The server's confirmation of what the client wrote: a ``PING`` after it, and its ``PONG``."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client

__all__ = ["confirm"]

#: Turns of the loop given to nats-py's flusher before the PING goes anyway.
_TURNS = 8


async def confirm(client: Client, timeout: Any) -> None:
    """Return once the server answered a ``PING`` sent after everything written so far.

    nats-py's ``flush()`` writes its ``PING`` straight to the socket, while
    publishes and subscriptions wait in the client's buffer for its flusher
    task, which writes them on a later turn of the loop: the ``PING`` would
    overtake them, and its ``PONG`` would then confirm nothing (and the
    publish would wait on the wire for the flush's own bookkeeping). So the
    flusher gets the loop first, until the buffer is empty. A flusher held
    up by a full socket gets a few turns; then the ``PING`` goes anyway, as
    nats-py would send it.

    :param timeout: seconds to wait for the ``PONG`` (``nats.errors.TimeoutError`` after).
    """
    for _ in range(_TURNS):
        if not client.pending_data_size or not client.is_connected:
            break
        await asyncio.sleep(0)
    await client.flush(timeout)
