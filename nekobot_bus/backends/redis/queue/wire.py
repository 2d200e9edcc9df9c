"""Commands on the queue reader's own connection, and reading their RESP2 replies."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["call", "forget_departed", "pairs"]

logger = logging.getLogger("nekobot_bus.redis_streams")


def call(conn: Any, *args: Any) -> Any:
    """Run one command on the reader's connection; an error reply raises ``ResponseError``."""
    conn.send_command(*args)
    return conn.read_response()


def pairs(flat: Any) -> dict[bytes, Any]:
    """A RESP2 flat ``[key, value, ...]`` reply as a dict."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def forget_departed(conn: Any, streams: list[str], group: str, me: str, claim_idle: float) -> None:
    """Delete consumers that hold nothing and were last seen ``10 x claim_idle`` ago.

    Every bus joins under a new name, so without this a group collects a
    consumer for every process that ever ran. Deleting one that holds
    nothing loses nothing, and a live consumer deleted by mistake is
    created again by its next read.
    """
    limit_ms = int(claim_idle * 10 * 1000)
    mine = me.encode()
    for stream in streams:
        for row in call(conn, "XINFO", "CONSUMERS", stream, group):
            consumer = pairs(row)
            name = consumer[b"name"]
            if name != mine and int(consumer[b"pending"]) == 0 and int(consumer[b"idle"]) > limit_ms:
                call(conn, "XGROUP", "DELCONSUMER", stream, group, name)
                logger.info(
                    "consumer %s left group %s of %s long ago; removed",
                    name.decode(),
                    group,
                    stream,
                )
