"""The Bus contract: every test here runs unchanged against every backend."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from nekobot_bus import BusClosedError, Direction, InvalidChannelError, Message
from nekobot_bus.bus import Bus

from .conftest import BusFactory

WAIT = 10.0


def msg(channel: str = "telegram", session: str = "s1", content: str = "") -> Message:
    return Message(channel_id=channel, session_id=session, content=content)


def assert_counts_add_up(bus: Bus) -> dict[str, int]:
    assert bus.wait_idle(WAIT)
    m = bus.get_metrics()
    for d in ("in", "out"):
        finished = m[f"handled_{d}"] + m[f"no_handler_{d}"] + m[f"dropped_{d}"] + m[f"claimed_elsewhere_{d}"]
        assert m[f"messages_{d}"] == finished, m
    assert m["queue_depth"] == 0
    return m


def test_inbound_reply_reaches_the_outbound_handler(make_bus: BusFactory) -> None:
    bus = make_bus()
    replies: list[Message] = []
    done = threading.Event()

    def agent(message: Message) -> None:
        bus.send_outbound(message.reply(f"echo: {message.content}"))

    def channel(message: Message) -> None:
        replies.append(message)
        done.set()

    bus.register_inbound_handler("telegram", agent)
    bus.register_outbound_handler("telegram", channel)
    with bus:
        sent = msg(content="hello")
        bus.send_inbound(sent)
        assert done.wait(WAIT)
    [reply] = replies
    assert (reply.content, reply.reply_to, reply.session_id) == ("echo: hello", sent.id, "s1")
    m = assert_counts_add_up(bus)
    assert (m["messages_in"], m["handled_in"], m["messages_out"], m["handled_out"]) == (1, 1, 1, 1)


def test_every_handler_runs_and_a_failing_one_is_isolated(make_bus: BusFactory) -> None:
    bus = make_bus()
    seen: list[str] = []

    def failing(message: Message) -> None:
        seen.append("failing")
        raise RuntimeError("handler bug")

    bus.register_outbound_handler("discord", failing)
    bus.register_outbound_handler("discord", lambda m: seen.append("second"))
    with bus:
        for _ in range(3):
            bus.send_outbound(msg("discord"))
        m = assert_counts_add_up(bus)
    assert seen == ["failing", "second"] * 3
    assert (m["errors"], m["handled_out"]) == (3, 3)


def test_wildcard_handler_receives_every_channel(make_bus: BusFactory) -> None:
    bus = make_bus()
    everything: list[str] = []
    only_telegram: list[str] = []
    bus.register_inbound_handler("*", lambda m: everything.append(m.channel_id))
    bus.register_inbound_handler("telegram", lambda m: only_telegram.append(m.channel_id))
    with bus:
        for channel in ("telegram", "discord", "slack"):
            bus.send_inbound(msg(channel))
        assert_counts_add_up(bus)
    assert sorted(everything) == ["discord", "slack", "telegram"]
    assert only_telegram == ["telegram"]


def test_unregistered_channel_is_counted_as_no_handler(make_bus: BusFactory) -> None:
    bus = make_bus()
    got: list[Message] = []
    bus.register_handler("telegram", got.append)
    with bus:
        bus.send_outbound(msg())
        assert bus.wait_idle(WAIT)
        bus.unregister_handlers("telegram")
        bus.send_outbound(msg())
        bus.send_inbound(msg())
        m = assert_counts_add_up(bus)
    assert len(got) == 1
    assert m["handled_out"] == 1
    if getattr(bus, "delivery", "") == "queue":
        # Streams keep them for the group's next consumer (test_redis_streams).
        assert (m["no_handler"], m["sent_in"] + m["sent_out"]) == (0, 3)
    elif type(bus).__name__ == "NatsBus" or getattr(getattr(bus, "server", None), "pubsub", "") == "global":
        # Core NATS tells a publisher nothing about who listened, a cluster
        # node's PUBLISH only of its own subscribers (README: Guarantees).
        assert (m["no_handler"], m["sent_in"] + m["sent_out"]) == (0, 3)
    else:
        # In-process the bus sees the message and finds no handler; over
        # Redis nobody subscribes to the channel, so the sender counts it unrouted.
        assert m["no_handler"] + m.get("unrouted", 0) == 2


def test_many_producers_each_message_once_and_in_session_order(make_bus: BusFactory) -> None:
    producers, sessions_per_producer, per_session = 8, 10, 40
    bus = make_bus(gateway={"message_queue_size": 64})
    seen: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def handler(message: Message) -> None:
        with lock:
            seen[message.session_id].append(int(message.content))

    bus.register_inbound_handler("telegram", handler)
    errors: list[BaseException] = []

    def produce(p: int) -> None:
        try:
            for n in range(per_session):
                for s in range(sessions_per_producer):
                    bus.send_inbound(msg(session=f"p{p}-s{s}", content=str(n)))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    with bus:
        threads = [
            threading.Thread(target=produce, args=(p,), name=f"producer-{p}") for p in range(producers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        m = assert_counts_add_up(bus)
    assert not errors
    assert len(seen) == producers * sessions_per_producer
    for session, numbers in seen.items():
        assert numbers == list(range(per_session)), session
    total = producers * sessions_per_producer * per_session
    assert (m["messages_in"], m["handled_in"], m["errors"]) == (total, total, 0)


def test_send_after_stop_raises_and_stop_is_idempotent(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.start()
    assert bus.stop(timeout=5)
    assert bus.stop(timeout=5)
    with pytest.raises(BusClosedError):
        bus.send_inbound(msg())
    with pytest.raises(BusClosedError):
        bus.start()
    assert bus.get_metrics()["messages_in"] == 0


def test_messages_sent_before_start_are_handled_after_it(make_bus: BusFactory) -> None:
    bus = make_bus()
    got: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: got.append(m.content))
    for n in range(5):
        bus.send_inbound(msg(content=str(n)))
    with bus:
        assert_counts_add_up(bus)
    assert got == ["0", "1", "2", "3", "4"]


def test_stop_drains_what_was_sent(make_bus: BusFactory) -> None:
    bus = make_bus(bus={"workers": 2})
    handled: list[str] = []
    gate = threading.Event()

    def slow(message: Message) -> None:
        gate.wait(WAIT)
        handled.append(message.content)

    bus.register_inbound_handler("telegram", slow)
    bus.start()
    if bus.dispatch == "inline":
        gate.set()
    for n in range(30):
        bus.send_inbound(msg(session=f"s{n % 3}", content=str(n)))
    gate.set()
    assert bus.stop(timeout=WAIT, drain=True)
    assert sorted(handled, key=int) == [str(n) for n in range(30)]
    m = assert_counts_add_up(bus)
    assert (m["handled_in"], m["dropped"]) == (30, 0)


def test_a_handler_may_send_and_register(make_bus: BusFactory) -> None:
    bus = make_bus()
    done = threading.Event()

    def first(message: Message) -> None:
        bus.register_inbound_handler("discord", lambda m: done.set())
        bus.send_inbound(msg("discord"))

    bus.register_inbound_handler("telegram", first)
    with bus:
        bus.send_inbound(msg())
        assert done.wait(WAIT)
        assert_counts_add_up(bus)


def test_bad_input_is_rejected_with_clear_errors(make_bus: BusFactory) -> None:
    bus = make_bus()
    with pytest.raises(InvalidChannelError, match="glob"):
        bus.register_inbound_handler("tele*gram", print)
    with pytest.raises(InvalidChannelError, match="empty"):
        bus.register_outbound_handler("", print)
    with pytest.raises(TypeError, match="callable"):
        bus.register_inbound_handler("telegram", "not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Message"):
        bus.send_inbound({"channel_id": "telegram"})  # type: ignore[arg-type]


def test_health_answers_on_every_backend(make_bus: BusFactory) -> None:
    bus = make_bus()
    assert bus.health()["connected"] is False
    with bus:
        health = bus.health()
        assert health["connected"] is True
        assert {"backend", "pid"} <= set(health)
    assert bus.health()["connected"] is False


def test_wait_idle_after_an_unregister_in_flight_returns_promptly(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.register_inbound_handler("telegram", lambda message: None)
    batch = [msg(session=f"s{n % 5}", content=str(n)) for n in range(2000)]
    with bus:
        bus.send_many("inbound", batch)  # remote buses: one round trip, so most is still on its way
        bus.unregister_inbound_handlers("telegram")
        started = time.monotonic()
        assert bus.wait_idle(WAIT)
        assert time.monotonic() - started < 3.0
        m = assert_counts_add_up(bus)
        assert m["handled_in"] + m["no_handler_in"] <= len(batch)


def test_gauges_are_declared_as_gauges(make_bus: BusFactory) -> None:
    bus = make_bus()
    gauges = bus.gauge_names()
    assert {"queue_depth", "intake_bytes_in", "intake_bytes_out"} <= gauges
    assert not gauges & {"messages_in", "handled_in", "errors"}
    assert gauges <= set(bus.get_metrics())


def test_send_many_takes_the_direction_by_name_and_refuses_anything_else(make_bus: BusFactory) -> None:
    bus = make_bus()
    seen: list[str] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        seen.append(message.content)
        if len(seen) == 4:
            done.set()

    bus.register_inbound_handler("telegram", handler)
    with bus:
        bus.send_many("inbound", [msg(content=str(n)) for n in range(2)])
        bus.send_many(Direction.INBOUND, [msg(content=str(n)) for n in range(2, 4)])
        with pytest.raises(TypeError, match="direction must be a Direction, 'inbound' or 'outbound'"):
            bus.send_many("in", [msg()])
        with pytest.raises(TypeError, match=r"expected a nekobot_bus\.Message"):
            bus.send_many("inbound", [msg(), "not a message"])  # type: ignore[list-item]
        assert done.wait(WAIT)
        assert bus.wait_idle(WAIT)
    assert sorted(seen) == ["0", "1", "2", "3"], "a refused batch sent part of itself"


@pytest.mark.parametrize(
    "handler",
    [lambda: None, lambda message, extra: None, lambda *, message: None],
    ids=["no parameter", "two required", "keyword only"],
)
def test_a_handler_that_cannot_take_a_message_is_refused_at_registration(
    make_bus: BusFactory, handler: object
) -> None:
    bus = make_bus()
    with pytest.raises(TypeError, match="cannot be called with one message"):
        bus.register_inbound_handler("telegram", handler)  # type: ignore[arg-type]

    def with_a_default(message: Message, retries: int = 3) -> None:
        pass

    bus.register_inbound_handler("telegram", with_a_default)


def test_a_send_before_a_start_that_never_comes_is_counted(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.register_inbound_handler("telegram", lambda message: None)
    bus.send_inbound(msg())
    assert bus.stop(WAIT)
    m = bus.get_metrics()
    if "pending_in" in m:  # the queue delivery: the entry waits in its stream for the group
        assert m["sent_in"] == 1
    else:
        assert (m["messages_in"], m["dropped_in"]) == (1, 1)
