"""``nekobot-bus demo``: an echo agent and a console channel, a round trip per input line."""

from __future__ import annotations

import argparse
import sys
import threading

from ..config import create_bus
from ..message import Message
from ._arguments import positive_seconds

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="round-trip lines from stdin through an echo agent",
        description="Each line read from stdin goes in as an inbound message on channel 'console'; "
        "an echo agent answers with an outbound message, which is printed, until end of input. "
        "With --config the same runs on any bus, e.g. Redis.",
        epilog="example: printf 'hello\\nhow are you?\\n' | nekobot-bus demo",
    )
    demo.add_argument("--config", help="a bus config (JSON text or file); default: the local bus")
    demo.add_argument(
        "--timeout", type=positive_seconds, default=5.0, help="seconds to wait for each reply (5)"
    )
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bus = create_bus(args.config)
    replied = threading.Semaphore(0)

    def agent(message: Message) -> None:
        bus.send_outbound(message.reply(f"echo: {message.content}"))

    closed = threading.Event()  # whoever reads our output went away (demo | head)

    def console(message: Message) -> None:
        try:
            print(message.content, flush=True)
        except BrokenPipeError:
            closed.set()
        replied.release()

    bus.register_inbound_handler("console", agent)
    bus.register_outbound_handler("console", console)
    with bus:
        for line in sys.stdin:
            bus.send_inbound(
                Message(channel_id="console", session_id="console:stdin", content=line.rstrip("\n"))
            )
            if not replied.acquire(timeout=args.timeout):
                print(f"error: no reply within {args.timeout} s", file=sys.stderr)
                return 1
            if closed.is_set():
                raise BrokenPipeError  # main() ends quietly, as Unix tools do
    return 0
