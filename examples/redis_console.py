"""The console channel of the two-process example: lines in, the agent's replies out, over Redis.

With ``examples/redis_agent.py`` running::

    python examples/redis_console.py --redis-url redis://localhost:6379/0

Type lines; each reply is printed; end with Ctrl-D.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from nekobot_bus import BusConnectionError, Message, NekobotBusError, UnroutedMessageError, create_bus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    args = parser.parse_args()
    try:
        bus = create_bus({"bus": {"type": "redis", "redis_url": args.redis_url, "raise_on_unrouted": True}})
    except NekobotBusError as exc:  # a URL that is not one: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    answered = threading.Semaphore(0)

    session = f"console:{os.getpid()}"

    def show(message: Message) -> None:
        if message.session_id == session:  # other consoles' replies travel on the same channel
            print(f"agent> {message.content}", flush=True)
            answered.release()

    bus.register_outbound_handler("console", show)
    try:
        bus.start()
    except BusConnectionError as exc:  # Redis is not there, or refuses us: say so once, with the reason
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except NekobotBusError as exc:  # a bad address or database
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with bus:
        for line in sys.stdin:
            try:
                bus.send_inbound(Message(channel_id="console", session_id=session, content=line.strip()))
            except UnroutedMessageError:
                print("no agent is listening: start examples/redis_agent.py first", file=sys.stderr)
                return 1
            if not answered.acquire(timeout=5):
                print("no reply within 5 s", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
