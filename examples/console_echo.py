"""A console chat channel and an echo agent on the local bus, in one process.

Run it, type lines, end with Ctrl-D::

    python examples/console_echo.py

Each line goes in as an inbound message on channel ``console``; the agent
answers with an outbound message, which the console channel prints.
"""

from __future__ import annotations

import os
import sys
import threading

from nekobot_bus import Message, create_bus


def main() -> int:
    bus = create_bus({"bus": {"type": "local"}})
    answered = threading.Semaphore(0)

    def agent(message: Message) -> None:  # the agent: runs on a worker thread
        bus.send_outbound(message.reply(f"echo: {message.content}"))

    closed = threading.Event()  # whoever reads our output went away (console_echo.py | head)

    def console(message: Message) -> None:  # the channel: delivers the reply to its user
        try:
            print(f"agent> {message.content}", flush=True)
        except BrokenPipeError:
            closed.set()
        answered.release()

    bus.register_inbound_handler("console", agent)
    bus.register_outbound_handler("console", console)
    with bus:
        for line in sys.stdin:
            bus.send_inbound(Message(channel_id="console", session_id="console:you", content=line.strip()))
            answered.acquire(timeout=5)
            if closed.is_set():
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
                return 0
    print(f"handled {bus.get_metrics()['handled_in']} messages", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
