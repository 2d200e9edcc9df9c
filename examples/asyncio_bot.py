"""An asyncio chat bot that asks the agent over Redis and awaits each answer.

The "chat" is the console: each line typed is a user's message. With
``examples/redis_agent.py`` running::

    python examples/asyncio_bot.py --redis-url redis://localhost:6379/0

Nothing but the standard library and nekobot_bus. The loop never waits for
the bus: stdin is read on a thread, and ``await bus.request(...)`` waits
for the reply without holding the loop, so the bot's other tasks (a
Telegram long poll, in a real bot) keep running. End with Ctrl-D.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from nekobot_bus import (
    BusConnectionError,
    Message,
    NekobotBusError,
    RequestTimeoutError,
    UnroutedMessageError,
)
from nekobot_bus.aio import create_async_bus

ANSWER_WITHIN = 5.0


async def chat(redis_url: str) -> int:
    config = {"bus": {"type": "redis", "redis_url": redis_url, "raise_on_unrouted": True}}
    bus = create_async_bus(config)
    try:
        await bus.start()
    except BusConnectionError as exc:  # Redis is not there, or refuses us: say so once, with the reason
        print(f"error: {exc}", file=sys.stderr)
        await bus.stop()
        return 3
    session = f"asyncio-bot:{os.getpid()}"
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            asked = Message(channel_id="asyncio-bot", session_id=session, content=line.strip())
            try:
                reply = await bus.request(asked, timeout=ANSWER_WITHIN)
            except UnroutedMessageError:
                print("no agent is listening: start examples/redis_agent.py first", file=sys.stderr)
                return 1
            except RequestTimeoutError:
                print(f"no reply within {ANSWER_WITHIN:g} s", file=sys.stderr)
                return 1
            print(f"agent> {reply.content}", flush=True)
    finally:
        await bus.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    args = parser.parse_args()
    try:
        return asyncio.run(chat(args.redis_url))
    except NekobotBusError as exc:  # a URL that is not one: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
