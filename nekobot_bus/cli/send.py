"""``nekobot-bus send``: publish one message, built from flags or read from a JSON file."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import attrs

from .. import codec
from ..config import create_bus
from ..dispatch import Direction
from ..errors import ConfigError, MessageError
from ..message import Message
from ._target import add_target_arguments, config_from, ensure_reachable, redis_target

__all__ = ["add_parser", "run"]

#: The flags that build a message, besides --channel, and their help.
_MESSAGE_FLAGS = {
    "--session": "session id",
    "--user-id": "user id",
    "--username": "user name",
    "--type": "message type (default: text)",
    "--content": "the text",
    "--data": "a JSON object of extra data",
    "--reply-to": "id of the message this answers",
}


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
    way.add_argument(
        "--inbound",
        dest="direction",
        action="store_const",
        const=Direction.INBOUND,
        help="as if a chat channel received it, for the agent (the default)",
    )
    way.add_argument(
        "--outbound",
        dest="direction",
        action="store_const",
        const=Direction.OUTBOUND,
        help="as if the agent answered, for the channel",
    )
    send.set_defaults(direction=Direction.INBOUND)
    send.add_argument(
        "--file",
        help="the whole message as JSON (the Go gateway's shape); '-' reads stdin; "
        "given an id and stamped now when it has none; excludes the flags below",
    )
    built = send.add_argument_group("the message, without --file")
    built.add_argument("--channel", help="channel id, e.g. telegram (required)")
    for flag, what in _MESSAGE_FLAGS.items():
        built.add_argument(flag, default=None, help=what)
    send.set_defaults(run=run)


def build_message(args: argparse.Namespace) -> Message:
    """The message the flags or the file describe."""
    flags = {"--channel": args.channel} | {
        flag: getattr(args, flag[2:].replace("-", "_")) for flag in _MESSAGE_FLAGS
    }
    if args.file:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise ConfigError(f"--file gives the whole message; {', '.join(given)} cannot be used with it")
        return _from_file(args.file)
    if not args.channel:
        raise ConfigError("--channel is required unless the message comes from --file")
    try:
        data = json.loads(args.data or "{}")
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--data must be a JSON object")
    try:
        return Message(
            channel_id=args.channel,
            session_id=args.session or "",
            user_id=args.user_id or "",
            username=args.username or "",
            type=args.type or "text",
            content=args.content or "",
            data=data,
            reply_to=args.reply_to or "",
        )
    except ValueError as exc:  # a bad channel id or type
        raise ConfigError(str(exc)) from None


def _from_file(path: str) -> Message:
    """The message in *path* (``-``: stdin), stamped now when the file gives no timestamp."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    message = codec.decode(text)
    given = json.loads(text)  # decode() accepted it: a JSON object
    if "timestamp" not in given:
        message = attrs.evolve(message, timestamp=datetime.now(timezone.utc))
    if not given.get("id"):
        message = attrs.evolve(message, id=uuid.uuid4().hex)  # as Message() does; printed below
    return message


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
