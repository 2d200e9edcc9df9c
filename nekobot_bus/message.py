"""The message that travels on the bus, as the Go gateway defines it.

A :class:`Message` is immutable (attrs, frozen, slots) and is validated when it
is made, so a bus never carries a message without a usable channel id or with
a naive timestamp. Only ``data`` is a mutable dict; treat it as read-only once
the message is sent, since handlers of the local bus share the same object.
"""

from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime, timezone
from typing import Any

import attrs

from .errors import InvalidChannelError

__all__ = ["MAX_CHANNEL_ID_LENGTH", "WILDCARD", "Message", "MessageType", "validate_channel_id"]

#: The channel id that receives the messages of every channel.
WILDCARD = "*"

#: Longest accepted channel id, in characters.
MAX_CHANNEL_ID_LENGTH = 128

# Whitespace and control characters break logs and Redis channel names; glob
# characters (and the glob escape) would turn a channel name into a pattern.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f*?\[\]\\]")


class MessageType(str, enum.Enum):
    """What a message carries; the values are the Go gateway's strings."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    FILE = "file"
    LOCATION = "location"
    COMMAND = "command"

    def __str__(self) -> str:
        return self.value


def validate_channel_id(channel_id: object, *, allow_wildcard: bool = False) -> str:
    """Return *channel_id* if it is a usable channel id, else raise.

    :param allow_wildcard: accept ``"*"``, as handler registration does.
    :raises InvalidChannelError: naming the rule that failed.
    """
    if not isinstance(channel_id, str):
        raise InvalidChannelError(f"channel id must be a str, not {type(channel_id).__name__}")
    if allow_wildcard and channel_id == WILDCARD:
        return channel_id
    if not channel_id:
        raise InvalidChannelError("channel id must not be empty")
    if len(channel_id) > MAX_CHANNEL_ID_LENGTH:
        raise InvalidChannelError(
            f"channel id is {len(channel_id)} characters long; the limit is {MAX_CHANNEL_ID_LENGTH}"
        )
    bad = _FORBIDDEN.search(channel_id)
    if bad is not None:
        raise InvalidChannelError(
            f"channel id {channel_id!r} contains {bad.group()!r} at position {bad.start()}; "
            "whitespace, control characters and the glob characters * ? [ ] \\ are not allowed"
        )
    return channel_id


def _check_channel_id(_instance: object, _attribute: object, value: str) -> None:
    validate_channel_id(value)


def _to_message_type(value: MessageType | str) -> MessageType:
    # Go's zero value for the type is "", which the gateway treats as text.
    return MessageType(value) if value != "" else MessageType.TEXT


def _to_utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"timestamp must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("timestamp must be timezone-aware; a naive datetime is ambiguous on the wire")
    if offset or value.tzinfo is not timezone.utc:
        return value.astimezone(timezone.utc)
    return value


def _new_id() -> str:
    return uuid.uuid4().hex


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _str(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # A plain function: this runs for six fields of every message made or decoded.
    if value.__class__ is not str and not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Message:
    """One message between a chat channel and the agent.

    Fields are keyword-only; their names, JSON keys and order are those of the
    Go gateway. A message
    compares equal to another with the same fields; ``data`` takes part in
    equality but not in the hash.

    :param channel_id: where the message comes from or goes to, e.g.
        ``"telegram"``; see :func:`validate_channel_id`.
    :param session_id: the conversation; the bus keeps the messages of one
        session in the order they were sent.
    :param timestamp: an aware datetime, stored in UTC.
    """

    id: str = attrs.field(factory=_new_id, validator=_str)
    channel_id: str = attrs.field(validator=_check_channel_id)
    session_id: str = attrs.field(default="", validator=_str)
    user_id: str = attrs.field(default="", validator=_str)
    username: str = attrs.field(default="", validator=_str)
    type: MessageType = attrs.field(default=MessageType.TEXT, converter=_to_message_type)
    content: str = attrs.field(default="", validator=_str)
    data: dict[str, Any] = attrs.field(factory=dict, hash=False, validator=attrs.validators.instance_of(dict))
    timestamp: datetime = attrs.field(factory=_utc_now, converter=_to_utc)
    reply_to: str = attrs.field(default="", validator=_str)

    def reply(
        self,
        content: str,
        *,
        type: MessageType | str = MessageType.TEXT,  # noqa: A002 - the field's name
        data: dict[str, Any] | None = None,
    ) -> Message:
        """Build the answer to this message: same channel and session, ``reply_to`` set."""
        return Message(
            channel_id=self.channel_id,
            session_id=self.session_id,
            content=content,
            type=type,
            data={} if data is None else data,
            reply_to=self.id,
        )
