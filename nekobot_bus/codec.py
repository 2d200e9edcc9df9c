"""JSON bytes to :class:`~nekobot_bus.Message` and back, as the Go gateway writes them.

A payload is taken as Go's ``encoding/json`` would take it and nothing is
coerced: ``"content": 42`` is an error, not ``"42"``. Encoding and decoding
are on the path of every message between processes, so the common case is
spelled out: orjson reads and writes the JSON (where it would differ from
:mod:`json`, :mod:`json` does it), and a payload whose fields all have their
final types becomes a :class:`Message` directly. Anything else goes through
one dedicated :class:`cattrs.Converter` with strict hooks, which explains
what is wrong; ``tests/test_codec.py`` holds both paths to the same results.

Decoding follows Go's rules for what is absent: a missing or ``null`` field
gets Go's zero value (``""``, an empty ``data`` map, the zero time
``0001-01-01T00:00:00Z``; an empty ``type`` means text), and unknown keys are
ignored so that a newer writer can add fields. ``channel_id`` is required.

Strings are read as Go reads them, too: a lone UTF-16 surrogate escape
(``"\\ud800"``), which JSON allows and a misbehaving client may send, becomes
U+FFFD, so that every decoded message can be encoded again (for a reply).

The size limit (:data:`DEFAULT_MAX_SIZE`) is checked before parsing, so a
huge payload costs no parse, and after encoding, so an oversized message
fails at the sender rather than at every receiver.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from datetime import datetime, timezone
from typing import Any

import cattrs
import orjson

from .errors import InvalidChannelError, MessageDecodeError, MessageEncodeError
from .message import Message, MessageType, validate_channel_id

__all__ = ["DEFAULT_MAX_SIZE", "converter", "decode", "encode", "format_timestamp", "parse_timestamp"]

#: Largest payload accepted by :func:`encode` and :func:`decode`, in bytes (1 MiB).
DEFAULT_MAX_SIZE = 1024 * 1024

GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)

# RFC 3339 as Go's time.Time parser requires it: a 'T', seconds, and a zone.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def _iso_for_fromisoformat(match: re.Match[str]) -> str:
    """The matched timestamp in the one form Python 3.10's ``fromisoformat`` reads."""
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in "Zz" else zone
    fraction = "" if fraction is None else "." + fraction[:6].ljust(6, "0")
    return base.upper() + fraction + zone


if sys.version_info >= (3, 11):
    # fromisoformat reads all of RFC 3339 but 't' and 'z'; upper() is cheaper
    # than rebuilding the text, and decoding is on every receiver's hot path.
    def _iso_text(match: re.Match[str]) -> str:
        return match.string.upper()
else:
    _iso_text = _iso_for_fromisoformat

_GO_ZERO_FIELDS: dict[str, Any] = {
    "id": "",
    "session_id": "",
    "user_id": "",
    "username": "",
    "type": "",
    "content": "",
    "data": None,
    "timestamp": None,
    "reply_to": "",
}


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with a zone into an aware UTC datetime.

    Nanoseconds, which Go writes, are truncated to microseconds.

    :raises ValueError: if *text* is not RFC 3339 with an explicit zone.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"timestamp {text!r} is not RFC 3339 with a zone, e.g. 2026-01-02T03:04:05Z")
    try:
        # The pattern has vouched for the shape; fromisoformat reads it fast.
        value = datetime.fromisoformat(_iso_text(match))
        return value if value.tzinfo is timezone.utc else value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"timestamp {text!r} is not a valid time: {exc}") from exc


def format_timestamp(value: datetime) -> str:
    """Write an aware datetime as RFC 3339 in UTC with a ``Z``, as Go reads it."""
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    # isoformat() ends in "+00:00" for UTC; Go writes (and everyone reads) "Z".
    return value.isoformat()[:-6] + "Z"


def _strict_str(value: object, _type: object) -> str:
    if value is None:  # Go leaves a string field empty for null
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_json_kind(value)}")
    return value


def _structure_data(value: object, _type: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {_json_kind(value)}")
    return value


def _structure_timestamp(value: object, _type: object) -> datetime:
    if value is None:
        return GO_ZERO_TIME
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 string, got {_json_kind(value)}")
    return parse_timestamp(value)


def _structure_type(value: object, _type: object) -> MessageType:
    if value is None:
        return MessageType.TEXT
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_json_kind(value)}")
    if value == "":  # Go's zero value; the gateway treats it as text
        return MessageType.TEXT
    try:
        return MessageType(value)
    except ValueError:
        known = ", ".join(t.value for t in MessageType)
        raise ValueError(f"unknown message type {value!r} (known: {known})") from None


def _json_kind(value: object) -> str:
    kinds = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        float: "a number",
        int: "a number",
    }
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


# An escape of a UTF-16 surrogate; only such a payload can decode to a lone one
# (UTF-8 bytes cannot hold a surrogate, and json pairs a valid high+low escape).
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _may_hold_surrogates(payload: bytes | bytearray | str) -> bool:
    if isinstance(payload, str):
        return "\\u" in payload and _SURROGATE_ESCAPE_TEXT.search(payload) is not None
    return b"\\u" in payload and _SURROGATE_ESCAPE_BYTES.search(payload) is not None


def _replace_lone_surrogates(value: Any) -> Any:
    """*value* with every lone surrogate in its strings (keys too) as U+FFFD, as Go reads them."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    return value


def _describe(exc: BaseException, _type: object) -> str:
    return str(exc)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(MessageType, _structure_type)
    conv.register_structure_hook(datetime, _structure_timestamp)
    conv.register_structure_hook_func(lambda cls: cls == dict[str, Any], _structure_data)
    # data goes to json.dumps as it is: no recursive copy, and no silent
    # conversion of values JSON cannot carry (they fail in encode()).
    conv.register_unstructure_hook_func(lambda cls: cls == dict[str, Any], lambda value: value)
    conv.register_unstructure_hook(datetime, format_timestamp)
    conv.register_unstructure_hook(MessageType, lambda t: t.value)
    return conv


_TYPES: dict[str, MessageType] = {t.value: t for t in MessageType} | {"": MessageType.TEXT}
_new = object.__new__
_set = object.__setattr__


@functools.lru_cache(maxsize=4096)  # on every decode: each channel id is checked once, bounded
def _valid_channel(channel_id: str) -> bool:
    try:
        validate_channel_id(channel_id)
    except InvalidChannelError:
        return False
    return True


def _build_plain(obj: dict[str, Any]) -> Message | None:
    """Build the message directly when every field already has its final type.

    That is what a sender almost always writes, and decoding is on the hot
    path of every remote receiver: this skips the converter and the
    validators of ``Message.__init__`` (a third of the cost of a decode)
    after checking exactly what they would. Anything unusual (a ``null``, a
    wrong kind, a bad value) returns ``None`` and takes the converter's path,
    which explains the problem. ``tests/test_codec.py`` holds both paths to
    the same results.
    """
    get = obj.get
    message_id = get("id", "")
    session_id = get("session_id", "")
    user_id = get("user_id", "")
    username = get("username", "")
    content = get("content", "")
    reply_to = get("reply_to", "")
    kind = get("type", "")
    channel_id = obj["channel_id"]
    if not (
        message_id.__class__ is str
        and session_id.__class__ is str
        and user_id.__class__ is str
        and username.__class__ is str
        and content.__class__ is str
        and reply_to.__class__ is str
        and kind.__class__ is str
        and kind in _TYPES
        and channel_id.__class__ is str
        and _valid_channel(channel_id)
    ):
        return None
    data = get("data")
    if data is None:
        data = {}
    elif data.__class__ is not dict:
        return None
    timestamp = get("timestamp")
    if timestamp is None:
        when = GO_ZERO_TIME
    elif timestamp.__class__ is not str:
        return None
    else:
        try:
            when = parse_timestamp(timestamp)
        except ValueError:
            return None
    message: Message = _new(Message)
    # Message is frozen: attrs itself fills the slots of a new instance this way.
    _set(message, "id", message_id)
    _set(message, "channel_id", channel_id)
    _set(message, "session_id", session_id)
    _set(message, "user_id", user_id)
    _set(message, "username", username)
    _set(message, "type", _TYPES[kind])
    _set(message, "content", content)
    _set(message, "data", data)
    _set(message, "timestamp", when)
    _set(message, "reply_to", reply_to)
    return message


# An integer of 19 digits or more may not fit 64 bits (below -2**63, past 2**64 - 1),
# which orjson would read as a float.
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def _parse(payload: bytes | bytearray | str) -> Any:
    """The JSON value of *payload*, read as :func:`json.loads` reads it (and Go, for lone surrogates).

    orjson reads it when it can, in a fifth of the time: the JSON that
    senders write. What it reads differently, the standard library reads
    instead: orjson refuses a lone surrogate escape, ``NaN``, a number past a
    double and a byte order mark, which json reads (a lone surrogate becomes
    U+FFFD below); and it reads an integer past 64 bits as a float, where
    json keeps it exact. A message holds numbers only in ``data``, so one
    with data and a run of 19 digits anywhere is read by json too.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _parse_as_json(payload)  # json says what is wrong, or reads what orjson does not
    if obj.__class__ is dict and obj.get("data"):
        long_digits = _LONG_DIGITS_TEXT if isinstance(payload, str) else _LONG_DIGITS_BYTES
        if long_digits.search(payload) is not None:  # type: ignore[arg-type]
            return _parse_as_json(payload)
    return obj


def _parse_as_json(payload: bytes | bytearray | str) -> Any:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        raise MessageDecodeError(f"payload is not JSON: {exc}") from None
    if _may_hold_surrogates(payload):
        obj = _replace_lone_surrogates(obj)
    return obj


#: The converter behind :func:`encode` and :func:`decode`; other code should not modify it.
converter = _make_converter()
# Made once: json.dumps with options would build a new encoder per message.
_to_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_NO_DATA = orjson.Fragment(b"{}")


def encode(message: Message, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Return *message* as the UTF-8 JSON the Go gateway reads.

    orjson writes the fields, strings and the UTC timestamp, byte for byte
    as :mod:`json` would write them and :func:`format_timestamp` the
    timestamp (``tests/test_codec.py`` holds them to it); a non-empty
    ``data`` is written by :mod:`json`, whose rules users meet: ``NaN`` and
    values JSON cannot carry are refused (orjson would write ``null``, or a
    datetime), and integers of any size are exact.

    :raises MessageEncodeError: if ``data`` holds something JSON cannot
        carry, or the result is larger than *max_size* bytes.
    """
    data = message.data
    stamp = message.timestamp
    try:
        # orjson writes a UTC datetime itself; it refuses a subclass (pandas' Timestamp is one).
        when = (
            stamp if stamp.__class__ is datetime and stamp.tzinfo is timezone.utc else format_timestamp(stamp)
        )
        body = orjson.dumps(
            {
                "id": message.id,
                "channel_id": message.channel_id,
                "session_id": message.session_id,
                "user_id": message.user_id,
                "username": message.username,
                "type": message.type.value,
                "content": message.content,
                "data": orjson.Fragment(_to_json(data).encode()) if data else _NO_DATA,
                "timestamp": when,
                "reply_to": message.reply_to,
            },
            option=orjson.OPT_UTC_Z,
        )
    except (TypeError, ValueError, RecursionError) as exc:  # orjson.JSONEncodeError is a TypeError
        # RecursionError: data nested past the json module's depth (about 1,000 levels).
        raise MessageEncodeError(f"message {message.id!r} cannot be written as JSON: {exc}") from exc
    if len(body) > max_size:
        raise MessageEncodeError(
            f"message {message.id!r} is {len(body)} bytes as JSON; the limit is {max_size}"
        )
    return body


def decode(payload: bytes | bytearray | memoryview | str, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """Read one message from JSON bytes written by this library or the Go gateway.

    :raises MessageDecodeError: naming what is wrong with *payload*.
    """
    if len(payload) > max_size:
        raise MessageDecodeError(f"payload is {len(payload)} bytes; the limit is {max_size}")
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    obj = _parse(payload)
    if not isinstance(obj, dict):
        raise MessageDecodeError(f"payload is JSON but {_json_kind(obj)}, not an object")
    if not isinstance(obj.get("channel_id"), str):
        raise MessageDecodeError(
            f"payload has no channel_id string (got {_json_kind(obj.get('channel_id'))})"
        )
    plain = _build_plain(obj)
    if plain is not None:
        return plain
    fields = _GO_ZERO_FIELDS | obj
    try:
        message: Message = converter.structure(fields, Message)
    except InvalidChannelError as exc:
        raise MessageDecodeError(f"payload has a bad channel_id: {exc}") from None
    except cattrs.ClassValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, path="payload", format_exception=_describe))
        raise MessageDecodeError(f"payload is not a message: {problems}") from None
    except (TypeError, ValueError) as exc:
        raise MessageDecodeError(f"payload is not a message: {exc}") from None
    return message
