"""The agent process of the two-process example: answers every inbound message over Redis.

Start it first, then ``examples/redis_console.py`` in another terminal::

    python examples/redis_agent.py --redis-url redis://localhost:6379/0

It runs until stdin ends or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from nekobot_bus import BusConnectionError, Message, NekobotBusError, create_bus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    args = parser.parse_args()
    try:
        bus = create_bus({"bus": {"type": "redis", "redis_url": args.redis_url}})
    except NekobotBusError as exc:  # a URL that is not one: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def answer(message: Message) -> None:
        bus.send_outbound(message.reply(f"agent heard {message.content!r} on {message.channel_id}"))

    bus.register_inbound_handler("*", answer)  # every channel
    try:
        bus.start()
    except BusConnectionError as exc:  # Redis is not there, or refuses us: say so once, with the reason
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except NekobotBusError as exc:  # a bad address or database
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with bus:
        print("agent ready", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()  # until end of input (Ctrl-D) or Ctrl-C
    print(f"agent answered {bus.get_metrics()['handled_in']} messages", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
