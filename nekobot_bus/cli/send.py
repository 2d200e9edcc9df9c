"""``nekobot-bus send``: publish one message, built from flags or read from a JSON file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import codec
from ..config import create_bus
from ..dispatch import Direction
from ..errors import ConfigError, MessageError
from ..message import Message
from ._target import add_target_arguments, config_from, ensure_reachable, redis_target

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send",
        help="publish one message to a Redis bus",
        description="Publish one message to a Redis bus, inbound (as if a chat channel received it) "
        "or outbound (as if the agent answered). Build it from flags, or read the Go gateway's JSON "
        "from a file ('-' for stdin). Prints the message id.",
        epilog="examples:\n"
        "  nekobot-bus send --redis-url redis://localhost:6379/0 --channel telegram --session chat:1 "
        "--content 'hi'\n"
        "  nekobot-bus send --config bus.json --outbound --file reply.json\n\n"
        "exit status 1: nobody was subscribed to that channel (fan-out delivery).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(send)
    way = send.add_mutually_exclusive_group()
    way.add_argument("--inbound", dest="direction", action="store_const", const=Direction.INBOUND)
    way.add_argument("--outbound", dest="direction", action="store_const", const=Direction.OUTBOUND)
    send.set_defaults(direction=Direction.INBOUND)
    send.add_argument("--file", help="the message as JSON (the Go gateway's shape); '-' reads stdin")
    send.add_argument("--channel", help="channel id, e.g. telegram (required without --file)")
    send.add_argument("--session", default="", help="session id")
    send.add_argument("--user-id", default="", help="user id")
    send.add_argument("--username", default="", help="user name")
    send.add_argument("--type", default="text", help="message type (default: text)")
    send.add_argument("--content", default="", help="the text")
    send.add_argument("--data", default="{}", help="a JSON object of extra data")
    send.add_argument("--reply-to", default="", help="id of the message this answers")
    send.set_defaults(run=run)


def build_message(args: argparse.Namespace) -> Message:
    """The message the flags or the file describe."""
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        return codec.decode(text)
    if not args.channel:
        raise ConfigError("--channel is required unless the message comes from --file")
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--data must be a JSON object")
    try:
        return Message(
            channel_id=args.channel,
            session_id=args.session,
            user_id=args.user_id,
            username=args.username,
            type=args.type,
            content=args.content,
            data=data,
            reply_to=args.reply_to,
        )
    except ValueError as exc:  # a bad channel id or type
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    try:
        message = build_message(args)
    except (OSError, MessageError) as exc:
        raise ConfigError(f"cannot read the message: {exc}") from None
    config = config_from(args)
    ensure_reachable(redis_target(config))
    bus = create_bus(config)
    with bus:
        if args.direction is Direction.INBOUND:
            bus.send_inbound(message)
        else:
            bus.send_outbound(message)
    print(message.id)
    if bus.get_metrics().get("unrouted", 0):
        print(
            f"warning: no process was subscribed to {args.direction} channel {message.channel_id!r}; "
            "the message reached nobody",
            file=sys.stderr,
        )
        return 1
    return 0
