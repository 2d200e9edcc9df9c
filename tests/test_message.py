"""Message construction and validation, channel id rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from nekobot_bus import InvalidChannelError, Message, MessageType, validate_channel_id


def test_defaults_are_those_of_the_go_gateway() -> None:
    before = datetime.now(timezone.utc)
    m = Message(channel_id="telegram")
    assert m.type is MessageType.TEXT
    assert m.data == {}
    assert before <= m.timestamp <= datetime.now(timezone.utc)
    assert m.timestamp.tzinfo is timezone.utc
    assert (m.session_id, m.user_id, m.username, m.content, m.reply_to) == ("",) * 5
    assert m.id
    assert m.id != Message(channel_id="telegram").id


def test_message_is_frozen_and_hashable() -> None:
    m = Message(channel_id="telegram", data={"k": 1})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.content = "changed"  # type: ignore[misc]
    assert hash(m) == hash(attrs.evolve(m))
    assert m == attrs.evolve(m)


def test_type_accepts_the_go_strings() -> None:
    assert Message(channel_id="t", type="image").type is MessageType.IMAGE
    assert Message(channel_id="t", type="").type is MessageType.TEXT
    with pytest.raises(ValueError, match="hologram"):
        Message(channel_id="t", type="hologram")


def test_timestamp_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Message(channel_id="t", timestamp=datetime(2026, 1, 1))
    local = datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))
    m = Message(channel_id="t", timestamp=local)
    assert m.timestamp == local
    assert m.timestamp.tzinfo is timezone.utc


def test_fields_are_checked_for_kind() -> None:
    with pytest.raises(TypeError, match="content"):
        Message(channel_id="t", content=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data"):
        Message(channel_id="t", data=[1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channel_id", "rule"),
    [
        ("", "empty"),
        ("x" * 129, "limit is 128"),
        ("tele gram", "whitespace"),
        ("tele\x00gram", "control"),
        ("tele*", "glob"),
        ("a?b", "glob"),
        ("[ab]", "glob"),
        (42, "must be a str"),
    ],
)
def test_bad_channel_ids_name_the_rule(channel_id: object, rule: str) -> None:
    with pytest.raises(InvalidChannelError, match=rule):
        validate_channel_id(channel_id)
    with pytest.raises(InvalidChannelError):
        Message(channel_id=channel_id)  # type: ignore[arg-type]


def test_wildcard_is_only_for_handlers() -> None:
    assert validate_channel_id("*", allow_wildcard=True) == "*"
    with pytest.raises(InvalidChannelError):
        Message(channel_id="*")
    assert validate_channel_id("telegram:bot-1") == "telegram:bot-1"


def test_reply_keeps_channel_and_session_and_points_back() -> None:
    question = Message(channel_id="discord", session_id="guild:7", user_id="u", content="ping")
    answer = question.reply("pong", data={"markdown": True})
    assert (answer.channel_id, answer.session_id, answer.reply_to) == ("discord", "guild:7", question.id)
    assert (answer.content, answer.data, answer.type) == ("pong", {"markdown": True}, MessageType.TEXT)
    assert answer.id != question.id
