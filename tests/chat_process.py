"""One process of the end-to-end test: a gateway (telegram, discord) or the agent.

``python -m tests.chat_process ROLE REDIS_ADDR``. Prints ``ready`` once
subscribed. A gateway sends each stdin line as an inbound message and prints
each reply it receives; the agent answers every inbound message. All exit
cleanly at end of input.
"""

from __future__ import annotations

import sys

from nekobot_bus import Message, create_bus


def main(role: str, addr: str) -> int:
    bus = create_bus({"bus": {"type": "redis", "redis_addr": addr}})
    if role == "agent":
        bus.register_inbound_handler(
            "*", lambda m: bus.send_outbound(m.reply(f"agent to {m.channel_id}: {m.content}"))
        )
    else:
        bus.register_outbound_handler(role, lambda m: print(f"reply {m.content}", flush=True))
    with bus:
        print("ready", flush=True)
        for line in sys.stdin:
            if role != "agent":
                bus.send_inbound(Message(channel_id=role, session_id=f"{role}:1", content=line.rstrip("\n")))
        bus.wait_idle(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
