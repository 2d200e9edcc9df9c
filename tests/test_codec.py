"""The wire codec against the Go gateway's vectors, its limits, and a round-trip property."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nekobot_bus import Message, MessageDecodeError, MessageEncodeError, MessageType, codec
from nekobot_bus.message import MAX_CHANNEL_ID_LENGTH

# The Go gateway's exact payloads; tests/data/README.rst says where they come from.
VECTORS_PATH = Path(__file__).with_name("data") / "nekobot-go-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
FIELDS = [
    "id",
    "channel_id",
    "session_id",
    "user_id",
    "username",
    "type",
    "content",
    "data",
    "timestamp",
    "reply_to",
]


def as_expect(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel_id": message.channel_id,
        "session_id": message.session_id,
        "user_id": message.user_id,
        "username": message.username,
        "type": message.type.value,
        "content": message.content,
        "data": message.data,
        "timestamp": message.timestamp,
        "reply_to": message.reply_to,
    }


@pytest.mark.parametrize("case", VECTORS["decode"], ids=lambda c: c["name"])
def test_go_payloads_decode_to_the_expected_fields(case: dict[str, Any]) -> None:
    decoded = codec.decode(case["wire"].encode())
    expect = dict(case["expect"], timestamp=datetime.fromisoformat(case["expect"]["timestamp"]))
    assert as_expect(decoded) == expect
    assert decoded.timestamp.tzinfo is timezone.utc


@pytest.mark.parametrize("case", VECTORS["decode"], ids=lambda c: c["name"])
def test_go_payloads_survive_a_round_trip(case: dict[str, Any]) -> None:
    decoded = codec.decode(case["wire"].encode())
    assert codec.decode(codec.encode(decoded)) == decoded


@pytest.mark.parametrize("case", VECTORS["reject"], ids=lambda c: c["name"])
def test_go_reject_cases_raise_a_decode_error(case: dict[str, Any]) -> None:
    with pytest.raises(MessageDecodeError) as info:
        codec.decode(case["wire"].encode())
    assert isinstance(info.value, ValueError)
    assert "payload" in str(info.value)


@pytest.mark.parametrize(
    ("wire", "named"),
    [
        ('{"channel_id":"t","content":42}', "content"),
        ('{"channel_id":"t","type":"hologram"}', "hologram"),
        ('{"channel_id":"t","timestamp":"2026-01-02 03:04:05"}', "RFC 3339"),
        ('{"channel_id":"t","data":[1]}', "data"),
        ("[1,2,3]", "array"),
        ('{"content":"no channel"}', "channel_id"),
        ('{"channel_id":"a b"}', "channel id"),
    ],
)
def test_decode_errors_name_the_problem(wire: str, named: str) -> None:
    with pytest.raises(MessageDecodeError, match=named):
        codec.decode(wire)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("", id="fast path"),
        pytest.param(',"username":null', id="converter path"),
    ],
)
def test_lone_surrogate_escapes_read_as_go_reads_them_and_a_reply_encodes(extra: str) -> None:
    wire = (
        r'{"id":"m\ud800","channel_id":"telegram","content":"\udfff x \ud83d\ude00 \uDBFF\u0041",'
        r'"data":{"k\udc00":["\ud801"]}' + extra + "}"
    )
    message = codec.decode(wire.encode())
    assert message.id == "m\ufffd"
    assert message.content == "\ufffd x \U0001f600 \ufffdA"
    assert message.data == {"k\ufffd": ["\ufffd"]}
    reply = message.reply("pong")
    assert codec.decode(codec.encode(reply)).reply_to == "m\ufffd"
    assert codec.decode(codec.encode(message)) == message


def test_an_escaped_backslash_before_u_d800_is_plain_text() -> None:
    message = codec.decode(rb'{"channel_id":"t","content":"\\ud800"}')
    assert message.content == "\\ud800"


def test_encode_writes_all_ten_keys_in_go_form() -> None:
    message = Message(
        channel_id="telegram",
        session_id="s",
        data={},
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 6, timezone.utc),
    )
    obj = json.loads(codec.encode(message))
    assert list(obj) == FIELDS
    assert obj["timestamp"] == "2026-01-02T03:04:05.000006Z"
    assert obj["data"] == {}
    assert all(isinstance(obj[key], str) for key in FIELDS if key != "data")


def test_encode_writes_utc_with_a_zone_for_any_aware_time() -> None:
    local = datetime(2026, 11, 28, 9, 3, 32, tzinfo=timezone(timedelta(hours=8)))
    obj = json.loads(codec.encode(Message(channel_id="t", timestamp=local)))
    assert obj["timestamp"] == "2026-11-28T01:03:32Z"


class _Moment(datetime):
    """A datetime subclass, as pandas' Timestamp is one: orjson refuses to write those itself."""


def test_encode_writes_a_datetime_subclass_as_its_plain_datetime() -> None:
    plain = datetime(2026, 11, 29, 2, 10, 11, 5, tzinfo=timezone.utc)
    moment = _Moment(2026, 11, 29, 2, 10, 11, 5, tzinfo=timezone.utc)
    message = Message(channel_id="t", id="m1", timestamp=plain)
    assert type(attrs.evolve(message, timestamp=moment).timestamp) is _Moment
    assert codec.encode(attrs.evolve(message, timestamp=moment)) == codec.encode(message)


def test_size_limit_is_enforced_before_parsing_and_when_encoding() -> None:
    with pytest.raises(MessageDecodeError, match="limit"):
        codec.decode(b"x" * (codec.DEFAULT_MAX_SIZE + 1))
    big = Message(channel_id="t", content="x" * 2000)
    with pytest.raises(MessageEncodeError, match="limit is 1000"):
        codec.encode(big, max_size=1000)
    assert codec.decode(codec.encode(big), max_size=3000) == big


def test_pickle_and_binary_garbage_are_rejected() -> None:
    for payload in (pickle.dumps({"channel_id": "t"}), b"\xff\xfe\x00", b"[" * 50_000):
        with pytest.raises(MessageDecodeError):
            codec.decode(payload)


def test_data_nested_deeper_than_json_writes_fails_at_the_sender() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100_000):  # past what json writes on any Python (3.13 writes 5,000 levels)
        deep = {"d": deep}
    with pytest.raises(MessageEncodeError, match="JSON"):
        codec.encode(Message(channel_id="t", data=deep))


def test_data_that_json_cannot_carry_fails_at_the_sender() -> None:
    with pytest.raises(MessageEncodeError, match="JSON"):
        codec.encode(Message(channel_id="t", data={"when": datetime.now(timezone.utc)}))
    with pytest.raises(MessageEncodeError):
        codec.encode(Message(channel_id="t", data={"x": float("nan")}))


channel_ids = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        blacklist_characters="*?[]\\\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    ),
    min_size=1,
    max_size=MAX_CHANNEL_ID_LENGTH,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: decode() reads those exactly (codec._parse)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.builds(
    Message,
    id=st.text(),
    channel_id=channel_ids,
    session_id=st.text(),
    user_id=st.text(),
    username=st.text(),
    type=st.sampled_from(MessageType),
    content=st.text(),
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    timestamp=st.datetimes(timezones=st.just(timezone.utc)),
    reply_to=st.text(),
)


@given(messages)
def test_any_message_survives_encode_then_decode(message: Message) -> None:
    assert codec.decode(codec.encode(message)) == message


@given(messages)
def test_encode_writes_what_the_standard_json_module_writes(message: Message) -> None:
    # orjson writes the fields (codec.encode): it must not change a byte the Go gateway reads.
    as_json = json.dumps(
        codec.converter.unstructure(message), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    assert codec.encode(message) == as_json.encode()


@pytest.mark.parametrize(
    "data",
    [
        '{"big":123456789012345678901234567890}',
        '{"neg":-98765432109876543210,"in":"12345678901234567890"}',
        '{"below_int64":-9300000000000000000}',
        '{"top_uint64":18446744073709551615}',
        '{"x":NaN,"y":Infinity}',
        '{"huge":1e400}',
        '{"lone":"\\ud800 x"}',
        '{"pair":"\\ud83d\\ude00","deep":[[[[[[1]]]]]]}',
    ],
)
def test_data_that_orjson_reads_differently_is_read_as_json_reads_it(data: str) -> None:
    payload = '{"channel_id":"t","data":' + data + "}"
    expected = json.loads(data)
    if "lone" in expected:
        expected["lone"] = "\ufffd x"  # as Go reads it
    for form in (payload, payload.encode(), b"\xef\xbb\xbf" + payload.encode()):
        decoded = codec.decode(form).data
        assert repr(decoded) == repr(expected)  # repr: NaN equals nothing, and 1 == 1.0


def converter_path(obj: dict[str, Any]) -> Message | None:
    try:
        message: Message = codec.converter.structure(codec._GO_ZERO_FIELDS | obj, Message)
    except Exception:
        return None
    return message


def fast_path_agrees(obj: object) -> None:
    if not isinstance(obj, dict) or not isinstance(obj.get("channel_id"), str):
        return  # decode() rejects these before either path
    fast = codec._build_plain(obj)
    if fast is not None:
        attrs.validate(fast)
        assert fast == converter_path(obj)
        assert [getattr(fast, name) for name in FIELDS] == [
            getattr(converter_path(obj), name) for name in FIELDS
        ]


@pytest.mark.parametrize("case", VECTORS["decode"] + VECTORS["reject"], ids=lambda c: c["name"])
def test_the_fast_decode_path_agrees_with_the_converter_on_go_payloads(case: dict[str, Any]) -> None:
    try:
        obj = json.loads(case["wire"])
    except ValueError:
        return
    fast_path_agrees(obj)


field_values = (
    st.none()
    | st.text(max_size=5)
    | st.sampled_from(["", "text", "image", "hologram", "2026-01-02T03:04:05.123456789+05:30", "a b", "*"])
    | st.integers()
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    | st.datetimes(timezones=st.just(timezone.utc)).map(codec.format_timestamp)
)


wire_objects = st.builds(
    lambda message, changes: json.loads(codec.encode(message)) | changes,
    messages,
    st.dictionaries(st.sampled_from([*FIELDS, "extra"]), field_values, max_size=2),
)


@given(wire_objects)
def test_the_fast_decode_path_agrees_with_the_converter_on_any_fields(obj: dict[str, Any]) -> None:
    fast_path_agrees(obj)
    if codec._build_plain(obj) is None and converter_path(obj) is not None:
        # Only null fields, which the fast path leaves to the converter, may take the long way.
        assert any(obj.get(name) is None for name in obj if name not in {"data", "timestamp"})


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02t03:04:05.1z",
        "2026-01-02T03:04:05.123456789+05:30",
        "2026-01-02T03:04:05.1234-01:00",
    ],
)
def test_timestamps_read_alike_on_every_python(text: str) -> None:
    match = codec._RFC3339.fullmatch(text)
    assert match is not None
    portable = datetime.fromisoformat(codec._iso_for_fromisoformat(match))
    assert portable == codec.parse_timestamp(text)
