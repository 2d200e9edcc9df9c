"""The ``nekobot-bus`` command."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from . import __version__
from .config import create_bus
from .errors import NekobotBusError
from .message import Message

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """An echo agent and a console channel: each input line goes in, its reply is printed."""
    bus = create_bus(args.config)
    replied = threading.Semaphore(0)

    def agent(message: Message) -> None:
        bus.send_outbound(message.reply(f"echo: {message.content}"))

    def console(message: Message) -> None:
        print(message.content, flush=True)
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nekobot-bus",
        description="The message bus between chat channels and the agent that answers them.",
    )
    parser.add_argument("--version", action="version", version=f"nekobot_bus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="round-trip lines from stdin through an echo agent",
        description="Each line read from stdin goes in as an inbound message on channel 'console'; "
        "an echo agent answers and the reply is printed, until end of input.",
    )
    demo.add_argument("--config", help="a bus config (JSON text or file); default: the local bus")
    demo.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except NekobotBusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result
