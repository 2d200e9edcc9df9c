"""RedisBus against real redis-server processes: wire, faults, garbage, limits."""

from __future__ import annotations

import json
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, ConfigError, Direction, Message, create_bus, decode
from nekobot_bus.backends.redis import RedisBus

from .conftest import redis_config
from .redis_server import RedisServer, free_port
from .test_codec import FIELDS, VECTORS

WAIT = 10.0


def new_bus(made: list[Bus], server: RedisServer, **bus: Any) -> RedisBus:
    created = create_bus(redis_config(server, **bus))
    assert isinstance(created, RedisBus)
    made.append(created)
    return created


class Collector:
    """A handler that remembers message ids and wakes waiters."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.ids.append(message.id)
            self.lock.notify_all()

    def wait_for(self, message_id: str, timeout: float = WAIT) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: message_id in self.ids, timeout)


def probe(bus: RedisBus, collector: Collector, timeout: float = 20.0) -> float:
    """Send probes until one arrives; return how long delivery took to resume."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        message = Message(channel_id="telegram", session_id="probe")
        try:
            bus.send_inbound(message)
        except BusConnectionError:
            time.sleep(0.1)
            continue
        if collector.wait_for(message.id, 0.5):
            return time.monotonic() - started
    raise AssertionError(f"delivery did not resume within {timeout} s")


def started_bus(made: list[Bus], server: RedisServer, **bus: Any) -> tuple[RedisBus, Collector]:
    """A started bus whose collector receives every inbound message of ``telegram``."""
    created = new_bus(made, server, **bus)
    collector = Collector()
    created.register_inbound_handler("telegram", collector)
    created.start()
    return created, collector


class Stream:
    """Sends a steady stream from a thread during a fault and records each outcome."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.ok: list[str] = []
        self.raised: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-stream")

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            message = Message(channel_id="telegram", session_id=f"s{n % 7}", content=str(n))
            n += 1
            try:
                self.bus.send_inbound(message)
                self.ok.append(message.id)
            except BusConnectionError:
                self.raised.append(message.id)
            self.stop.wait(0.01)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(WAIT * 3)


def assert_nothing_silently_missing(bus: RedisBus, stream: Stream, collector: Collector) -> None:
    bus.wait_idle(5)
    m = bus.get_metrics()
    received = set(collector.ids)
    missing = set(stream.ok) - received
    assert len(missing) <= m["unrouted"] + m["lost"] + m["dropped"], (len(missing), m)
    assert len(received) == len(set(collector.ids)), "a message was delivered twice"
    assert m["messages_in"] == m["handled_in"] + m["no_handler_in"] + m["dropped_in"]


def test_a_go_payload_reaches_our_handler_and_ours_decodes_as_go_expects(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    got: list[Message] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        got.append(message)
        done.set()

    bus.register_inbound_handler("*", handler)
    bus.register_outbound_handler("*", handler)
    bus.start()
    with redis_server.client() as raw:
        for case in VECTORS["decode"]:
            done.clear()
            assert raw.publish(case["channel"], case["wire"].encode()) == 1
            assert done.wait(WAIT)
        # What we publish is what the Go gateway reads: the channel name and the JSON.
        pubsub = raw.pubsub()
        pubsub.subscribe("nekobot:bus:outbound:discord")
        confirmation = pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        sent = Message(channel_id="discord", session_id="discord:guild:7", content="pong")
        bus.send_outbound(sent)
        raw_message = pubsub.get_message(timeout=5)
        pubsub.close()
    assert [m.id for m in got[: len(VECTORS["decode"])]] == [c["expect"]["id"] for c in VECTORS["decode"]]
    assert raw_message is not None
    assert decode(raw_message["data"]) == sent
    assert list(json.loads(raw_message["data"])) == FIELDS


def test_garbage_is_counted_and_the_next_good_message_arrives(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus, collector = started_bus(buses, redis_server)
    garbage = [
        b"hello",
        b"[1,2,3]",
        b'{"channel_id":"telegram","content":42}',
        b'{"channel_id":"telegram","type":"hologram"}',
        b"x" * (2 * 1024 * 1024),
        pickle.dumps(Message(channel_id="telegram")),
    ]
    with redis_server.client() as raw:
        for payload in garbage:
            raw.publish("nekobot:bus:inbound:telegram", payload)
    good = Message(channel_id="telegram", content="still here")
    bus.send_inbound(good)
    assert collector.wait_for(good.id)
    m = bus.get_metrics()
    assert (m["decode_errors"], m["handled_in"], m["reconnects"]) == (len(garbage), 1, 0)


def test_wildcard_and_exact_handlers_get_each_message_once(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    exact, everything = Collector(), Collector()
    bus.register_inbound_handler("telegram", exact)
    bus.register_inbound_handler("*", everything)
    with bus:
        for _ in range(20):
            bus.send_inbound(Message(channel_id="telegram"))
        bus.send_inbound(Message(channel_id="discord"))
        assert bus.wait_idle(WAIT)
    assert (len(exact.ids), len(set(exact.ids))) == (20, 20)
    assert (len(everything.ids), len(set(everything.ids))) == (21, 21)


def test_killed_pubsub_connection_reconnects_and_delivery_resumes(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus, collector = started_bus(buses, redis_server)
    probe(bus, collector)
    with Stream(bus) as stream:
        time.sleep(0.3)
        with redis_server.client() as raw:
            assert raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        assert probe(bus, collector) < 5.0
        time.sleep(0.3)
    assert bus.get_metrics()["reconnects"] >= 1
    assert bus.health()["subscribed"]
    assert_nothing_silently_missing(bus, stream, collector)


def test_server_down_for_15_s_then_back(redis_server: RedisServer, buses: list[Bus]) -> None:
    bus, collector = started_bus(buses, redis_server, send_timeout=0.5)
    with Stream(bus) as stream:
        time.sleep(0.3)
        redis_server.stop()
        time.sleep(1.0)
        assert not bus.health()["connected"]
        time.sleep(14.0)
        redis_server.start()
        assert probe(bus, collector) < 8.0
    assert stream.raised, "sends during the outage must raise, not vanish"
    m = bus.get_metrics()
    assert m["reconnects"] >= 1
    assert m["connection_errors"] >= 1
    assert_nothing_silently_missing(bus, stream, collector)


def test_paused_server_trips_the_liveness_check(redis_server: RedisServer, buses: list[Bus]) -> None:
    bus, collector = started_bus(buses, redis_server, send_timeout=0.5, socket_timeout=1.0)
    probe(bus, collector)
    with Stream(bus) as stream:
        redis_server.pause()
        deadline = time.monotonic() + 6.0
        while bus.health()["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not bus.health()["connected"], "a silent connection was not noticed"
        redis_server.resume()
        assert probe(bus, collector) < 10.0
    assert bus.get_metrics()["reconnects"] >= 1
    assert_nothing_silently_missing(bus, stream, collector)


@pytest.mark.parametrize(
    ("intake_bytes", "all_handled"),
    [
        pytest.param(None, True, id="default intake: the burst waits in memory"),
        pytest.param(200_000, False, id="small intake: the excess is dropped, and counted"),
    ],
)
def test_a_burst_behind_a_slow_handler_neither_cuts_the_subscriber_nor_goes_missing(
    tmp_path: Path, buses: list[Bus], intake_bytes: int | None, all_handled: bool
) -> None:
    server = RedisServer(tmp_path, "--client-output-buffer-limit", "pubsub", "256kb", "0", "0")
    server.start()
    try:
        options = {} if intake_bytes is None else {"intake_bytes": intake_bytes}
        bus = new_bus(buses, server, workers=1, **options)
        gate = threading.Event()
        handled: list[str] = []

        def slow(message: Message) -> None:
            gate.wait(WAIT)
            handled.append(message.id)

        bus.register_inbound_handler("telegram", slow)
        bus.start()
        body = "x" * 4096
        batch = [Message(channel_id="telegram", session_id="s", content=body) for _ in range(400)]  # ~1.7 MB
        bus.send_many(Direction.INBOUND, batch)
        time.sleep(0.5)
        peak = bus.get_metrics()["intake_bytes_in"]
        gate.set()
        assert bus.wait_idle(WAIT)
        m = bus.get_metrics()
        assert m["reconnects"] == 0, "Redis cut the subscriber"
        assert m["lost"] == 0
        assert m["messages_in"] == len(batch) == m["handled_in"] + m["dropped_in"]
        assert len(handled) == m["handled_in"]
        assert m["intake_bytes_in"] == 0, "the intake gauge returns to zero"
        if all_handled:
            assert m["dropped_in"] == 0
            assert peak > 1_000_000  # the burst really waited in the intake
        else:
            assert 0 < m["dropped_in"] < len(batch)
            assert peak <= 200_000
    finally:
        for made in buses:
            made.stop(5)
        server.stop()


def test_stop_with_the_server_stopped_returns_within_its_timeout(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    bus.register_inbound_handler("telegram", lambda m: None)
    bus.start()
    redis_server.stop()
    started = time.monotonic()
    bus.stop(timeout=2.0)
    assert time.monotonic() - started < 2.5


def test_stop_with_the_server_paused_returns_within_its_timeout(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    bus.register_inbound_handler("telegram", lambda m: None)
    bus.start()
    redis_server.pause()
    try:
        time.sleep(2.0)  # let the reader start reconnecting into the paused server
        started = time.monotonic()
        bus.stop(timeout=2.0)
        assert time.monotonic() - started < 2.5
    finally:
        redis_server.resume()


def test_unreachable_redis_raises_naming_the_address_not_the_password(buses: list[Bus]) -> None:
    port = free_port()
    bus = create_bus(
        {
            "bus": {
                "type": "redis",
                "redis_addr": f"127.0.0.1:{port}",
                "redis_password": "s3cret",
                "send_timeout": 0.3,
            }
        }
    )
    assert isinstance(bus, RedisBus)
    buses.append(bus)
    assert "s3cret" not in repr(bus)
    with pytest.raises(BusConnectionError, match=f"127.0.0.1:{port}"):
        bus.start()
    with pytest.raises(BusConnectionError) as info:
        bus.send_many(Direction.INBOUND, [Message(channel_id="telegram")])
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_password_protected_server_and_the_go_config_shape(tmp_path: Path, buses: list[Bus]) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        config = {
            "bus": {"type": "redis", "prefix": "go:"},
            "redis": {"addr": server.addr, "password": "s3cret", "db": 2},
        }
        bus = create_bus(config)
        assert isinstance(bus, RedisBus)
        buses.append(bus)
        assert "s3cret" not in repr(bus)
        assert bus.channel_name(Direction.INBOUND, "telegram") == "go:inbound:telegram"
        collector = Collector()
        bus.register_inbound_handler("telegram", collector)
        with bus:
            message = Message(channel_id="telegram")
            bus.send_inbound(message)
            assert collector.wait_for(message.id)
    finally:
        for made in buses:
            made.stop(5)
        server.stop()


def test_redis_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown key bus\.redis_adr"):
        create_bus({"bus": {"type": "redis", "redis_adr": "x"}})
    with pytest.raises(ConfigError, match="glob"):
        create_bus({"bus": {"type": "redis", "redis_prefix": "bus*"}})
    with pytest.raises(ConfigError, match="inline"):
        create_bus({"bus": {"type": "redis", "dispatch": "inline"}})
    with pytest.raises(ConfigError, match="delivery"):
        create_bus({"bus": {"type": "redis", "delivery": "carrier-pigeon"}})


def test_a_burst_of_ten_thousand_in_batches_loses_nothing_under_default_settings(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    receiver, sender = new_bus(buses, redis_server), new_bus(buses, redis_server)
    receiver.register_inbound_handler("telegram", lambda message: None)
    receiver.start()
    sender.start()
    batch = [Message(channel_id="telegram", session_id=f"s{n % 50}", content=str(n)) for n in range(10_000)]
    for start in range(0, len(batch), 500):
        sender.send_many("inbound", batch[start : start + 500])
    deadline = time.monotonic() + WAIT * 3
    while receiver.get_metrics()["messages_in"] < len(batch) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.wait_idle(WAIT * 3)
    m = receiver.get_metrics()
    assert (m["messages_in"], m["handled_in"], m["dropped_in"]) == (10_000, 10_000, 0)
