"""The MQTT backend against real mosquitto processes: config, credentials, faults, both deliveries."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from nekobot_bus import (
    Bus,
    BusConnectionError,
    ConfigError,
    Direction,
    InvalidChannelError,
    Message,
    MessageEncodeError,
    UnroutedMessageError,
    codec,
    create_bus,
)
from nekobot_bus.backends.mqtt import MqttBase

from .agents import Agent, wait_until_handled
from .conftest import mqtt_config
from .load import Handled, Load, wait_for_metric
from .mosquitto_broker import MosquittoBroker

WAIT = 20.0


def build(buses: list[Bus], config: dict[str, Any]) -> MqttBase:
    made = create_bus(config)
    assert isinstance(made, MqttBase)
    buses.append(made)
    return made


def msg(content: str = "", session: str = "s1", channel: str = "telegram") -> Message:
    return Message(channel_id=channel, session_id=session, content=content)


class Collect:
    """A handler that records contents; it can be told to fail on one."""

    def __init__(self, fail_on: str = "") -> None:
        self.contents: list[str] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self._lock:
            self.contents.append(message.content)
        if self.fail_on and message.content == self.fail_on:
            raise RuntimeError(f"cannot handle {message.content}")

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.contents) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class RawClient:
    """What another program on the same broker does: a bare paho client, publishing or listening."""

    def __init__(self, broker: MosquittoBroker, *subscriptions: str) -> None:
        self.received: list[paho.MQTTMessage] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        self.client.connect("127.0.0.1", broker.port)
        for topic in subscriptions:
            self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.2)  # the SUBACKs

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"mqtt_url": "localhost:1883"}, "bus.mqtt_url must start with mqtt:// or mqtts://"),
        ({"mqtt_url": "tcp://h:1883"}, "bus.mqtt_url must start with mqtt:// or mqtts://"),
        ({"mqtt_url": "mqtt://h:99999"}, "the port must be a number from 1 to 65535"),
        ({"qos": 2}, "bus.qos must be 0 or 1, not 2"),
        ({"topic_prefix": "a/+/b"}, "bus.topic_prefix must be '/'-separated MQTT topic levels"),
        ({"topic_prefix": "$SYS/x"}, "a leading '\\$'"),
        ({"delivery": "stream"}, "bus.delivery must be 'fanout' or 'queue'"),
        ({"delivery": "queue", "group": "a/b"}, "bus.group must be a non-empty string without '/'"),
        ({"delivery": "fanout", "max_deliveries": 3}, "unknown key bus.max_deliveries"),
        ({"session_expiry": -1}, "bus.session_expiry"),
        ({"dispatch": "inline"}, "dispatch 'inline' is for the local bus"),
    ],
)
def test_a_bad_config_names_the_key(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus({"bus": {"type": "mqtt", **bus}}).stop()


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_credentials_are_never_shown(
    tmp_path: Path, buses: list[Bus], caplog: pytest.LogCaptureFixture, delivery: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="nekobot_bus")
    broker = MosquittoBroker(tmp_path / "mosquitto", users={"ann": "right"})
    broker.start()
    try:
        wrong = build(
            buses,
            {
                "bus": {
                    "type": "mqtt",
                    "delivery": delivery,
                    "mqtt_url": f"mqtt://ann:hunter2@127.0.0.1:{broker.port}",
                    "send_timeout": 1.0,
                }
            },
        )
        with pytest.raises(BusConnectionError, match="refused the connection") as raised:
            wrong.start()
        right = build(buses, mqtt_config(broker, mqtt_url=f"mqtt://ann:right@127.0.0.1:{broker.port}"))
        with right:
            assert right.health()["connected"] is True
            shown_right = f"{right!r} {right.health()}"
    finally:
        broker.stop()
    shown = f"{wrong!r} {wrong.health()} {raised.value} {caplog.text} {shown_right}"
    assert "hunter2" not in shown
    assert "right@" not in shown
    assert f"mqtt://ann@127.0.0.1:{broker.port}" in repr(wrong)


def test_a_channel_id_that_is_not_one_topic_level_is_refused(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    bus = build(buses, mqtt_config(shared_mosquitto))
    with pytest.raises(InvalidChannelError, match=r"cannot be an MQTT topic level: '/'"):
        bus.register_inbound_handler("slack/team1", lambda message: None)
    with pytest.raises(InvalidChannelError, match="'#' is not allowed"):
        bus.send_inbound(msg(channel="a#b"))  # before start too: not held, refused
    assert bus.get_metrics()["messages_in"] == 0
    with bus, pytest.raises(InvalidChannelError, match=r"'\+' is not allowed"):
        bus.send_inbound(msg(channel="a+b"))


def test_every_process_gets_every_message_on_the_wire_of_the_go_gateway(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    config = mqtt_config(shared_mosquitto)
    prefix = config["bus"]["topic_prefix"]
    first, second = build(buses, config), build(buses, config)
    got = [Collect(), Collect()]
    first.register_inbound_handler("telegram", got[0])
    second.register_inbound_handler("*", got[1])
    listener = RawClient(shared_mosquitto, f"{prefix}/inbound/#")
    try:
        with first, second:
            sent = msg("hello")
            first.send_inbound(sent)
            assert first.wait_idle(WAIT)
            assert second.wait_idle(WAIT)
    finally:
        listener.close()
    assert got[0].contents == got[1].contents == ["hello"]
    [raw] = listener.received
    assert raw.topic == f"{prefix}/inbound/telegram"
    assert codec.decode(raw.payload) == sent


def test_payloads_from_other_programs_are_decoded_or_counted(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    config = mqtt_config(shared_mosquitto)
    prefix = config["bus"]["topic_prefix"]
    bus = build(buses, config)
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    other = RawClient(shared_mosquitto)
    try:
        with bus:
            other.publish(f"{prefix}/inbound/telegram", b"\xff not json")
            other.publish(f"{prefix}/inbound/telegram", codec.encode(msg("from go")))
            assert got.wait_for(1)
            assert bus.wait_idle(WAIT)
    finally:
        other.close()
    assert got.contents == ["from go"]
    assert bus.get_metrics()["decode_errors"] == 1


def test_a_payload_over_the_brokers_or_the_bus_limit_is_refused_before_sending(
    tmp_path: Path, buses: list[Bus]
) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto", settings=("max_packet_size 2048",))
    broker.start()
    try:
        bus = build(buses, mqtt_config(broker, max_message_size=4096))
        got = Collect()
        bus.register_inbound_handler("telegram", got)
        with bus:
            with pytest.raises(MessageEncodeError, match="Maximum Packet Size is 2048 bytes"):
                bus.send_inbound(msg("x" * 3000))
            with pytest.raises(MessageEncodeError, match="limit is 4096"):
                bus.send_inbound(msg("x" * 5000))
            bus.send_inbound(msg("small"))
            assert bus.wait_idle(WAIT)
            assert bus.health()["connected"] is True  # the broker did not drop us for a big packet
    finally:
        broker.stop()
    assert got.contents == ["small"]
    assert bus.get_metrics()["sent_in"] == 1


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_a_broker_restart_under_load_loses_no_confirmed_message(
    mosquitto: MosquittoBroker, buses: list[Bus], delivery: str
) -> None:
    """A restart saves the broker's sessions (SIGTERM): each subscriber's QoS 1 messages wait for it,
    and a message no subscription matched is counted."""
    config = mqtt_config(mosquitto, delivery=delivery, send_timeout=3.0)
    agent, gateway = build(buses, config), build(buses, config)
    got = Handled()
    agent.register_inbound_handler("telegram", got)
    with agent, gateway:
        with Load(gateway, every=0.002) as load:
            time.sleep(0.3)
            mosquitto.restart(graceful=True)
            deadline = time.monotonic() + WAIT
            while not (agent.health()["connected"] and gateway.health()["connected"]):
                assert time.monotonic() < deadline, "a bus did not reconnect"
                time.sleep(0.05)
            time.sleep(0.3)
        assert agent.wait_idle(WAIT)
    confirmed, unsure = set(load.acknowledged), {i for i, _ in load.refused}
    lost = confirmed - set(got.ids)
    # A message the broker took in the moment its subscriber's session was away matched no
    # subscription: the broker said so, and it is counted unrouted (raise_on_unrouted raises it).
    counted = gateway.get_metrics()["unrouted"]
    assert len(lost) <= counted, f"{len(lost)} confirmed sends lost, {counted} counted unrouted"
    assert set(got.ids) <= confirmed | unsure
    assert agent.get_metrics()["reconnects"] >= 1
    assert len(confirmed) > 100


def test_sends_fail_at_once_in_an_outage_older_than_send_timeout(
    mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    bus = build(buses, mqtt_config(mosquitto, send_timeout=1.0))
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        mosquitto.stop()
        time.sleep(1.3)
        started = time.monotonic()
        with pytest.raises(BusConnectionError, match="unreachable for"):
            bus.send_inbound(msg())
        assert time.monotonic() - started < 0.3
        assert bus.health()["connected"] is False


def test_a_paused_broker_makes_sends_raise_within_send_timeout(
    mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    bus = build(buses, mqtt_config(mosquitto, send_timeout=1.0))
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        mosquitto.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BusConnectionError, match="confirmed 0 of 1"):
                bus.send_inbound(msg())
            assert time.monotonic() - started < 2.5
        finally:
            mosquitto.resume()


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_stop_is_bounded_with_the_broker_down(
    mosquitto: MosquittoBroker, buses: list[Bus], delivery: str
) -> None:
    bus = build(buses, mqtt_config(mosquitto, delivery=delivery))
    bus.register_inbound_handler("telegram", lambda message: None)
    bus.start()
    mosquitto.stop()
    started = time.monotonic()
    bus.stop(timeout=3.0)
    assert time.monotonic() - started < 4.0
    assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]


def test_a_start_that_fails_leaves_no_thread_and_a_later_start_sends_what_waited(
    tmp_path: Path, buses: list[Bus]
) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto")  # not started yet
    bus = build(buses, mqtt_config(broker, send_timeout=1.0, connect_timeout=0.2))
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    bus.send_inbound(msg("held"))
    before = set(threading.enumerate())
    with pytest.raises(BusConnectionError, match="could not connect to the MQTT broker"):
        bus.start()
    assert set(threading.enumerate()) <= before, "a failed start left a thread"
    broker.start()
    try:
        bus.start()
        assert got.wait_for(1), "the message sent before the failed start was lost"
        assert bus.stop(WAIT)
    finally:
        broker.stop()
    assert got.contents == ["held"]


def test_two_agents_in_one_shared_subscription_each_get_a_share_and_nothing_twice(
    shared_mosquitto: MosquittoBroker, tmp_path: Path, buses: list[Bus]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/bus"
    agents = [Agent(shared_mosquitto.url, tmp_path / f"agent{n}.log", prefix=prefix) for n in range(2)]
    try:
        config = mqtt_config(shared_mosquitto, delivery="queue")
        config["bus"]["topic_prefix"] = prefix
        gateway = build(buses, config)
        with gateway:
            burst = [msg(str(n), session=f"s{n % 20}") for n in range(1000)]
            for i in range(0, len(burst), 100):
                gateway.send_many(Direction.INBOUND, burst[i : i + 100])
            ids = {m.id for m in burst}
            counts = wait_until_handled(agents, ids, WAIT)
        assert set(counts) == ids
        assert max(counts.values()) == 1, "a message was handled twice"
        metrics = [agent.finish() for agent in agents]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert all(m["handled_in"] > 0 for m in metrics), "every agent took a share"
    assert sum(m["acked_in"] for m in metrics) == 1000
    assert gateway.get_metrics()["unrouted"] == 0


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_a_send_nobody_subscribed_to_is_counted_or_raised(
    shared_mosquitto: MosquittoBroker, buses: list[Bus], delivery: str
) -> None:
    counting = build(buses, mqtt_config(shared_mosquitto, delivery=delivery))
    raising = build(buses, mqtt_config(shared_mosquitto, delivery=delivery, raise_on_unrouted=True))
    with counting, raising:
        counting.send_many(Direction.INBOUND, [msg("a"), msg("b")])
        with pytest.raises(UnroutedMessageError, match="1 of 1 message"):
            raising.send_inbound(msg("c"))
        raising.register_inbound_handler("telegram", lambda message: None)
        raising.send_inbound(msg("d"))  # a subscriber now: delivered
        assert raising.wait_idle(WAIT)
    assert (counting.get_metrics()["unrouted"], counting.get_metrics()["sent_in"]) == (2, 2)
    assert (raising.get_metrics()["unrouted"], raising.get_metrics()["handled_in"]) == (1, 1)


def test_a_killed_agents_unacknowledged_messages_wait_for_its_session(
    shared_mosquitto: MosquittoBroker, tmp_path: Path, buses: list[Bus]
) -> None:
    """What Mosquitto does: the messages a killed member held stay in its session; the other
    member does not get them; the same client id, back within session_expiry, gets them again."""
    prefix = f"t{uuid.uuid4().hex[:8]}/bus"

    def agent(name: str) -> Agent:
        return Agent(
            shared_mosquitto.url,
            tmp_path / f"{name}.log",
            "--delay",
            "0.01",
            "--client-id",
            name,
            prefix=prefix,
        )

    killed, other = agent(f"a-{prefix[1:9]}"), agent(f"b-{prefix[1:9]}")
    back = None
    try:
        config = mqtt_config(shared_mosquitto, delivery="queue")
        config["bus"]["topic_prefix"] = prefix
        gateway = build(buses, config)
        with gateway:
            burst = [msg(str(n), session=f"s{n % 40}") for n in range(400)]
            gateway.send_many(Direction.INBOUND, burst)
            deadline = time.monotonic() + WAIT
            while len(killed.handled()) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            killed.kill()
            ids = {m.id for m in burst}
            counts = wait_until_handled([killed, other], ids, 3.0)
            stranded = ids - set(counts)
            assert stranded, "Mosquitto gave the killed member's messages to the other (the README says not)"
            back = agent(killed.log.stem)  # the same client id, within session_expiry
            counts = wait_until_handled([killed, other, back], ids, WAIT)
        assert set(counts) == ids, f"{len(ids - set(counts))} messages never handled"
        assert {i for i, n in counts.items() if n > 1} <= set(killed.handled())
    finally:
        for each in (killed, other, back):
            if each is not None:
                each.ensure_dead()


def test_a_poison_message_is_dead_lettered_after_max_deliveries_and_acknowledged(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    config = mqtt_config(shared_mosquitto, delivery="queue", max_deliveries=3, retry_backoff=0.05)
    prefix = config["bus"]["topic_prefix"]
    bus = build(buses, config)
    got = Collect(fail_on="poison")
    bus.register_inbound_handler("telegram", got)
    dead, other = RawClient(shared_mosquitto, f"{prefix}/dead/#"), RawClient(shared_mosquitto)
    try:
        with bus:
            bus.send_inbound(msg("poison"))
            bus.send_inbound(msg("after", session="s2"))
            bus.send_inbound(Message(channel_id="telegram", content="x" * 10))
            other.publish(f"{prefix}/inbound/telegram", b"not json")
            assert got.wait_for(5)
            assert bus.wait_idle(WAIT)
            deadline = time.monotonic() + WAIT
            while len(dead.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        dead.close()
        other.close()
    assert got.contents.count("poison") == 3
    m = bus.get_metrics()
    assert (m["errors"], m["redelivered_in"], m["dead_lettered_in"], m["decode_errors"]) == (3, 2, 2, 1)
    assert m["acked_in"] == 2 + 2  # the two good ones, and the two dead letters once filed
    reasons = {}
    for letter in dead.received:
        assert letter.topic == f"{prefix}/dead/inbound/telegram"
        properties = dict(letter.properties.UserProperty)  # type: ignore[union-attr]
        reasons[letter.payload[:8]] = properties["nekobot-reason"]
    assert any("cannot handle poison" in r and "on delivery 3" in r for r in reasons.values())
    assert reasons[b"not json"].startswith("undecodable")


def test_senders_meet_no_deadlock_when_the_broker_says_nobody_subscribed(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    """paho calls on_publish under its own lock, which publish() takes: the bus's PUBACK
    bookkeeping must not hold a lock of its own across publish(), or the two wait for each other."""
    bus = build(buses, mqtt_config(shared_mosquitto, send_timeout=5.0))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for _ in range(150):
                bus.send_inbound(msg())  # nobody subscribes: every PUBACK says 0x10
        except Exception as exc:  # surfaced below
            errors.append(exc)

    with bus:
        senders = [threading.Thread(target=send, name=f"sender-{n}") for n in range(8)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(WAIT)
        assert not [s for s in senders if s.is_alive()], "senders hang"
    assert not errors
    assert (bus.get_metrics()["sent_in"], bus.get_metrics()["unrouted"]) == (1200, 1200)


def test_messages_whose_handlers_went_away_do_not_hold_the_brokers_window(
    shared_mosquitto: MosquittoBroker, buses: list[Bus]
) -> None:
    """Receive Maximum is the workers' room (2 here): a message that found no handler is
    acknowledged, counted no_handler, or two of them would stop the broker sending for good."""
    config = mqtt_config(shared_mosquitto, delivery="queue", workers=1)
    config["gateway"] = {"message_queue_size": 2}
    bus, gateway = build(buses, config), build(buses, config)
    gate = threading.Event()
    got = Collect()
    bus.register_inbound_handler("telegram", lambda message: gate.wait(WAIT))
    with bus, gateway:
        gateway.send_many(Direction.INBOUND, [msg(str(n)) for n in range(4)])
        wait_for_metric(bus, "queue_depth", 2)
        bus.unregister_inbound_handlers("telegram")
        gate.set()
        assert bus.wait_idle(WAIT)
        bus.register_inbound_handler("telegram", got)
        gateway.send_many(Direction.INBOUND, [msg("after 1"), msg("after 2")])
        assert got.wait_for(2), "the broker stopped sending: its window is full of unacknowledged messages"
    m = bus.get_metrics()
    assert m["no_handler_in"] >= 1
    assert m["handled_in"] + m["no_handler_in"] == m["messages_in"]
