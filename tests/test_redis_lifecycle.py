"""Lifecycle promises of both Redis deliveries, with the server missing, paused or back."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, BusFullError, Message, MessageEncodeError, create_bus

from .conftest import queue_config, redis_config
from .redis_server import RedisServer

WAIT = 10.0
CONFIGS = {"fanout": redis_config, "queue": queue_config}


@pytest.fixture(params=sorted(CONFIGS))
def delivery(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(buses: list[Bus], delivery: str, server: RedisServer, **bus: Any) -> Bus:
    made = create_bus(CONFIGS[delivery](server, **bus))
    buses.append(made)
    return made


def test_a_start_that_fails_leaves_no_thread_and_a_later_start_sends_what_waited(
    tmp_path: Path, buses: list[Bus]
) -> None:
    server = RedisServer(tmp_path)  # not started yet
    bus = build(buses, "fanout", server, send_timeout=1.0, socket_connect_timeout=0.2)
    got = threading.Event()
    bus.register_inbound_handler("telegram", lambda message: got.set())
    bus.send_inbound(Message(channel_id="telegram", content="sent before start"))
    before = set(threading.enumerate())
    with pytest.raises(BusConnectionError, match=r"unreachable for 1\.0 s while connecting"):
        bus.start()
    assert set(threading.enumerate()) <= before, "a failed start left a thread"
    server.start()
    try:
        bus.start()
        assert got.wait(WAIT), "the message sent before the failed start was lost"
        assert bus.stop(WAIT)
    finally:
        server.stop()


def test_both_deliveries_hold_a_send_before_start_while_redis_is_away(
    tmp_path: Path, buses: list[Bus], delivery: str
) -> None:
    server = RedisServer(tmp_path)  # not started yet
    config = CONFIGS[delivery](server, send_timeout=1.0, socket_connect_timeout=0.2, workers=1)
    bus = create_bus({**config, "gateway": {"message_queue_size": 2}})
    buses.append(bus)
    got: list[str] = []
    bus.register_inbound_handler("telegram", lambda message: got.append(message.content))
    started = time.monotonic()
    bus.send_inbound(Message(channel_id="telegram", content="first"))
    bus.send_inbound(Message(channel_id="telegram", content="second"))
    assert time.monotonic() - started < 0.5, "a send before start() waited for Redis"
    with pytest.raises(BusFullError, match="2 messages already wait for start"):
        bus.send_inbound(Message(channel_id="telegram", content="third"))
    server.start()
    try:
        bus.start()
        assert bus.wait_idle(WAIT)
        deadline = time.monotonic() + WAIT
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == ["first", "second"]
        assert bus.stop(WAIT)
    finally:
        server.stop()


def test_what_waited_for_a_start_that_never_came_is_counted_dropped(
    tmp_path: Path, buses: list[Bus], delivery: str
) -> None:
    server = RedisServer(tmp_path)  # never started
    bus = build(buses, delivery, server, send_timeout=0.5, socket_connect_timeout=0.2)
    bus.register_inbound_handler("telegram", lambda message: None)
    bus.send_inbound(Message(channel_id="telegram"))
    assert bus.stop(WAIT)
    m = bus.get_metrics()
    assert (m["messages_in"], m["dropped_in"]) == (1, 1)


def test_a_queue_start_that_fails_leaves_no_thread(tmp_path: Path, buses: list[Bus]) -> None:
    server = RedisServer(tmp_path)  # never started
    bus = build(buses, "queue", server, send_timeout=0.5, socket_connect_timeout=0.2)
    bus.register_inbound_handler("telegram", lambda message: None)
    before = set(threading.enumerate())
    with pytest.raises(BusConnectionError):
        bus.start()
    assert set(threading.enumerate()) <= before


def test_register_on_a_running_bus_raises_when_redis_cannot_confirm(
    redis_server: RedisServer, buses: list[Bus], delivery: str
) -> None:
    bus = build(buses, delivery, redis_server, send_timeout=1.0, socket_timeout=0.5)
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BusConnectionError, match=r"within 1\.0 s"):
                bus.register_inbound_handler("discord", lambda message: None)
            assert time.monotonic() - started < 5.0
        finally:
            redis_server.resume()
        # The reader takes the change up once it is connected again.
        got = threading.Event()
        bus.register_inbound_handler("slack", lambda message: got.set())
        bus.send_inbound(Message(channel_id="slack"))
        assert got.wait(WAIT)


def test_a_drain_that_meets_a_paused_server_reports_failure(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = build(buses, "queue", redis_server, send_timeout=0.5, socket_timeout=0.5)
    bus.register_inbound_handler("telegram", lambda message: None)
    bus.start()
    bus.send_inbound(Message(channel_id="telegram"))
    redis_server.pause()
    try:
        assert bus.stop(timeout=3.0, drain=True) is False
    finally:
        redis_server.resume()


def test_sends_ride_out_a_blip_but_fail_at_once_in_an_outage(
    redis_server: RedisServer, buses: list[Bus], delivery: str
) -> None:
    bus = build(buses, delivery, redis_server, send_timeout=1.0, socket_connect_timeout=0.2)
    got = threading.Event()
    bus.register_inbound_handler("telegram", lambda message: got.set())
    with bus:
        redis_server.stop()

        def back_soon() -> None:
            time.sleep(0.3)
            redis_server.start()

        restart = threading.Thread(target=back_soon)
        restart.start()
        try:
            bus.send_inbound(Message(channel_id="telegram"))  # waits for the server, within send_timeout
        finally:
            restart.join()
        redis_server.stop()
        time.sleep(1.2)  # the outage is now older than send_timeout
        started = time.monotonic()
        with pytest.raises(BusConnectionError, match="has been unreachable for"):
            bus.send_inbound(Message(channel_id="telegram"))
        assert time.monotonic() - started < 0.5, "a send in a known outage waited for it again"
        redis_server.start()
        deadline = time.monotonic() + WAIT
        while not bus.health()["subscribed" if delivery == "fanout" else "connected"]:
            assert time.monotonic() < deadline, "the reader did not come back with the server"
            time.sleep(0.05)
        while True:  # the first connect that works ends the outage
            try:
                bus.send_inbound(Message(channel_id="telegram"))
                break
            except BusConnectionError:
                assert time.monotonic() < deadline, "sends did not recover with the server"
                time.sleep(0.1)
        assert got.wait(WAIT)


def test_a_bus_built_before_a_fork_names_itself_in_the_process_that_starts_it(
    redis_server: RedisServer, buses: list[Bus], delivery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn --preload builds the app, and its bus, in the master: each worker must be its own member."""
    bus = build(buses, delivery, redis_server, group="web")
    got = threading.Event()
    bus.register_outbound_handler("telegram", lambda message: got.set())
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # as in a worker forked from the parent
    bus.start()
    monkeypatch.undo()
    bus.send_outbound(Message(id="m-1", channel_id="telegram"))
    assert got.wait(WAIT)
    client: Any = redis_server.client()
    try:
        if delivery == "queue":
            [consumer] = client.xinfo_consumers("nekobot:bus:outbound:telegram", "web")
            name = consumer["name"].decode()
        else:
            name = client.get("nekobot:bus:claim:web:outbound:m-1").decode()
    finally:
        client.close()
    assert f"-{parent + 1}-" in name, name
    if delivery == "queue":
        assert bus.consumer == name  # type: ignore[attr-defined]


def test_a_message_that_could_never_be_sent_is_refused_before_start(
    tmp_path: Path, buses: list[Bus], delivery: str
) -> None:
    server = RedisServer(tmp_path)  # not started: the queue delivery holds too
    bus = build(buses, delivery, server, send_timeout=1.0, socket_connect_timeout=0.2, max_message_size=1024)
    with pytest.raises(MessageEncodeError, match="1024"):
        bus.send_inbound(Message(channel_id="telegram", content="x" * 2000))
    assert bus.get_metrics()["messages_in"] == 0


def test_the_queue_keeps_a_sessions_order_across_the_hold(tmp_path: Path, buses: list[Bus]) -> None:
    server = RedisServer(tmp_path)  # not started yet
    bus = build(buses, "queue", server, send_timeout=1.0, socket_connect_timeout=0.2)
    got: list[str] = []
    bus.register_inbound_handler("telegram", lambda message: got.append(message.content))
    bus.send_inbound(Message(channel_id="telegram", session_id="s", content="1"))  # held: Redis away
    server.start()
    try:
        bus.send_inbound(Message(channel_id="telegram", session_id="s", content="2"))  # behind 1, not before
        bus.start()
        assert bus.wait_idle(WAIT)
        assert got == ["1", "2"]
        assert bus.stop(WAIT)
    finally:
        server.stop()
