"""``nekobot-bus tail``: watch what flows through a Redis bus, decoded, as it happens.

It only reads: on the fan-out delivery it subscribes like one more process
(``PSUBSCRIBE``), on the queue delivery it reads the streams without a
consumer group (``XREAD``), so it takes nothing away from the agents. On a
cluster with sharded pub/sub it is a ``"*"`` listener: while it runs,
senders copy each message for it (``backends/redis/every.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import codec
from ..dispatch import Direction
from ..errors import BusConnectionError, MessageDecodeError
from ..message import validate_channel_id
from ..metrics import Metrics
from ._arguments import positive_count, positive_seconds
from ._target import RedisTarget, add_target_arguments, config_from, ensure_reachable, redis_target
from ._terminal import LONGEST, json_line, visible

if TYPE_CHECKING:
    import redis

__all__ = ["add_parser", "run"]

_POLL = 0.5  # seconds a read waits; bounds how late --timeout and new streams are noticed


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser(
        "tail",
        help="watch a Redis bus live, decoded",
        description="Print each message that flows through a Redis bus, decoded: time, direction, "
        "channel, session, sender and content. Payloads that are not messages are shown as such. "
        "Reads only; the processes on the bus are not affected.",
        epilog="examples:\n"
        "  nekobot-bus tail --redis-url redis://localhost:6379/0\n"
        "  nekobot-bus tail --config bus.json --outbound --channel telegram --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(tail)
    way = tail.add_mutually_exclusive_group()
    way.add_argument(
        "--inbound",
        dest="directions",
        action="store_const",
        const=(Direction.INBOUND,),
        help="only messages for the agent (default: both directions)",
    )
    way.add_argument(
        "--outbound",
        dest="directions",
        action="store_const",
        const=(Direction.OUTBOUND,),
        help="only the agent's replies (default: both directions)",
    )
    tail.set_defaults(directions=tuple(Direction))
    tail.add_argument("--channel", action="append", help="only this channel id; repeat for several")
    tail.add_argument(
        "--json",
        action="store_true",
        help=f"one JSON object per line, every field whole (text cuts fields at {LONGEST} characters)",
    )
    tail.add_argument("--count", type=positive_count, help="exit after this many messages")
    tail.add_argument("--timeout", type=positive_seconds, help="exit after this many seconds")
    tail.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import redis  # noqa: PLC0415 - the redis extra; demo and bench --backend local work without it

    target = redis_target(config_from(args))
    ensure_reachable(target)
    channels = [validate_channel_id(c) for c in args.channel or []]
    keys = target.keys
    # Exact names (each shard's, for a sharded queue), or one pattern per direction.
    names = {keys.every_channel(d): d for d in args.directions if not channels} | {
        keys.messages(d, c, shard): d
        for d in args.directions
        for c in channels
        for shard in (range(target.shards) if target.shards and target.delivery == "queue" else [None])
    }
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    client = _client(target)
    read = _read_streams if target.delivery == "queue" else _read_pubsub
    if target.delivery == "fanout" and getattr(target.server, "pubsub", None) == "sharded":
        names = {keys.every_copy(d): d for d in args.directions}
        read = functools.partial(_read_copies, lease=_lease(target, args.directions), only=set(channels))
    positions: dict[Any, Any] = {}  # where each stream was read up to; kept across reconnects
    seen = 0
    delay = 0.1
    lost = False
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                client.ping()
                if lost:
                    print(f"tail: reconnected to {target.server.address}", file=sys.stderr, flush=True)
                    lost, delay = False, 0.1
                for direction, channel, payload in read(client, target, names, deadline, positions):
                    print(_render(direction, channel, payload, as_json=args.json), flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return 0
            except BrokenPipeError:
                raise  # stdout closed (tail | head): main() ends quietly, not a lost Redis
            except (redis.ConnectionError, redis.TimeoutError, OSError, BusConnectionError) as exc:
                if not lost:
                    gap = "" if target.delivery == "queue" else "; what is published meanwhile is not shown"
                    print(
                        f"tail: lost Redis at {target.server.address} ({exc}); reconnecting{gap}",
                        file=sys.stderr,
                        flush=True,
                    )
                    lost = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        client.close()
    return 0


def _read_pubsub(
    client: redis.Redis,
    target: RedisTarget,
    names: dict[str, Direction],
    deadline: float | None,
    _positions: dict[Any, Any],
    *,
    tick: Callable[[], None] = lambda: None,
) -> Iterator[tuple[Direction, str, bytes]]:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    patterns = [n for n in names if n.endswith("*")]
    exact = [n for n in names if not n.endswith("*")]
    if patterns:
        pubsub.psubscribe(*patterns)
    if exact:
        pubsub.subscribe(*exact)
    try:
        while deadline is None or time.monotonic() < deadline:
            item = pubsub.get_message(timeout=_POLL)
            tick()
            if item is None or item["type"] not in ("message", "pmessage"):
                continue
            name = target.keys.parse(item["channel"].decode("utf-8", "replace"))
            if name is not None:
                yield name.direction, name.channel_id, item["data"]
    finally:
        pubsub.close()


def _client(target: RedisTarget) -> redis.Redis:
    """A client for what tail reads: on a cluster's queue delivery, of the primary of the bus's slot."""
    import redis  # noqa: PLC0415 - the redis extra

    from ..backends.redis.topology import ClusterNodes  # noqa: PLC0415

    options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": _POLL + 5, "protocol": 2}
    server = target.server
    if target.delivery == "queue" and isinstance(server, ClusterNodes):
        pool = server.slot_pool(target.keys.prefix, server.slot_map(**options), **options)
        return redis.Redis(connection_pool=pool)
    return server.client(**options)


def _lease(target: RedisTarget, directions: tuple[Direction, ...]) -> Callable[[], None]:
    """What keeps tail's ``"*"`` lease on a sharded cluster: call it at least every second."""
    from ..backends.redis.client import Reachability  # noqa: PLC0415 - the redis extra
    from ..backends.redis.every import RENEW_SECONDS, EveryCopies  # noqa: PLC0415

    runner = target.server.runner(Metrics(), 5.0, Reachability(), socket_connect_timeout=2, socket_timeout=5)
    every = EveryCopies(runner, target.keys)
    every.listen(directions, running=False)
    renewed_at = [float("-inf")]

    def keep() -> None:
        if time.monotonic() - renewed_at[0] >= RENEW_SECONDS:
            every.renew()
            renewed_at[0] = time.monotonic()

    return keep


def _read_copies(
    client: redis.Redis,
    target: RedisTarget,
    names: dict[str, Direction],
    deadline: float | None,
    positions: dict[Any, Any],
    *,
    lease: Callable[[], None],
    only: set[str],
) -> Iterator[tuple[Direction, str, bytes]]:
    """The copies senders on a sharded cluster make for ``"*"`` listeners, tail's lease kept meanwhile."""
    lease()
    for direction, _every, payload in _read_pubsub(client, target, names, deadline, positions, tick=lease):
        try:
            channel = codec.decode(payload).channel_id
        except MessageDecodeError:
            channel = "?"
        if not only or channel in only:
            yield direction, channel, payload


def _read_streams(
    client: redis.Redis,
    target: RedisTarget,
    names: dict[str, Direction],
    deadline: float | None,
    positions: dict[Any, Any],
) -> Iterator[tuple[Direction, str, bytes]]:
    # Stream -> last id read. Streams there at the start are read from their
    # end; streams that appear later are new, and read from their beginning.
    if not positions:
        for stream in _streams(client, target, names):
            info: Any = client.xinfo_stream(stream) if client.exists(stream) else {}
            positions[stream] = info.get("last-generated-id", b"0-0")
    while deadline is None or time.monotonic() < deadline:
        for stream in _streams(client, target, names):
            positions.setdefault(stream, b"0-0")
        if not positions:
            time.sleep(_POLL)
            continue
        reply: Any = client.xread(dict(positions), block=int(_POLL * 1000), count=100)
        for stream_name, entries in reply or []:
            stream = stream_name.decode()
            name = target.keys.parse(stream)
            for entry_id, fields in entries:
                positions[stream] = entry_id
                if name is not None:
                    yield name.direction, name.channel_id, (fields or {}).get(b"message", b"")


def _streams(client: redis.Redis, target: RedisTarget, names: dict[str, Direction]) -> list[str]:
    exact = [n for n in names if not n.endswith("*")]
    if len(exact) == len(names):
        return exact
    key = target.keys.announced_streams
    announced = {m.decode() for m in client.smembers(key)}  # type: ignore[union-attr]
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return sorted({*exact, *(s for s in announced if s.startswith(prefixes))})


def _render(direction: Direction, channel: str, payload: bytes, *, as_json: bool) -> str:
    """One line for *payload*: JSON, or text in which nothing a chat user wrote can act on the terminal."""
    try:
        message = codec.decode(payload)
    except MessageDecodeError as exc:
        preview = payload[:80].decode("utf-8", "replace")
        if as_json:
            return json_line(
                {
                    "direction": direction.value,
                    "channel": channel,
                    "error": str(exc),
                    "bytes": len(payload),
                    "preview": preview,
                }
            )
        return (
            f"{'-':<27} {direction.value:<8} {visible(channel):<12} "
            f"<undecodable, {len(payload)} bytes: {visible(str(exc))}>"
        )
    if as_json:
        wire = json.loads(codec.encode(message))
        return json_line({"direction": direction.value, "channel": channel, "message": wire})
    who = visible(message.username or message.user_id or "-", 64)
    kind = "" if message.type.value == "text" else f"[{message.type.value}] "
    reply = f" (reply to {visible(message.reply_to, 64)})" if message.reply_to else ""
    return (
        f"{codec.format_timestamp(message.timestamp):<27} {direction.value:<8} {visible(channel, 64):<12} "
        f"{visible(message.session_id or '-', 64):<16} {who}: {kind}{visible(message.content)}{reply}"
    )
