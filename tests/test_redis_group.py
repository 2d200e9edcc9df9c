"""The fan-out with a group: one member of the group handles each message, whoever published it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from nekobot_bus import Bus, ConfigError, Message, create_bus, encode

from .conftest import redis_config
from .redis_server import RedisServer

WAIT = 20.0


class Deliveries:
    """Which member handled which message, across the members of a group."""

    def __init__(self) -> None:
        self.by_member: dict[str, list[str]] = {}
        self.cond = threading.Condition()

    def handler(self, member: str) -> Any:
        self.by_member[member] = []

        def deliver(message: Message) -> None:
            with self.cond:
                self.by_member[member].append(message.content)
                self.cond.notify_all()

        return deliver

    def total(self) -> int:
        return sum(len(v) for v in self.by_member.values())

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.total() >= count, WAIT)


def members(
    buses: list[Bus], server: RedisServer, deliveries: Deliveries, count: int, **bus: Any
) -> list[Bus]:
    made = []
    for n in range(count):
        member = create_bus(redis_config(server, group="web", **bus))
        member.register_outbound_handler("telegram", deliveries.handler(f"member-{n}"))
        buses.append(member)
        member.start()
        made.append(member)
    return made


def publish(client: Any, content: str) -> None:
    """What the Go agent does: a plain PUBLISH of the message's JSON."""
    client.publish("nekobot:bus:outbound:telegram", encode(Message(channel_id="telegram", content=content)))


def settle(group: list[Bus], sent: int) -> None:
    """Wait until the members between them finished every message sent."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        metrics = [m.get_metrics() for m in group]
        if all(m["messages_out"] == sent for m in metrics) and all(m.wait_idle(WAIT) for m in group):
            return
        time.sleep(0.02)
    pytest.fail(f"the members did not each receive {sent} messages")


@pytest.mark.parametrize("publisher", ["bus", "plain PUBLISH, as the Go agent does"])
def test_each_message_is_handled_once_across_the_group(
    redis_server: RedisServer, buses: list[Bus], publisher: str
) -> None:
    deliveries = Deliveries()
    group = members(buses, redis_server, deliveries, 3)
    sent = [Message(channel_id="telegram", session_id=f"chat:{n % 7}", content=str(n)) for n in range(200)]
    if publisher == "bus":
        sender = create_bus(redis_config(redis_server))
        buses.append(sender)
        with sender:
            for message in sent:
                sender.send_outbound(message)
    else:
        client = redis_server.client()
        for message in sent:
            assert client.publish("nekobot:bus:outbound:telegram", encode(message)) == 3
        client.close()
    assert deliveries.wait_for(len(sent))
    settle(group, len(sent))
    handled = Counter(c for contents in deliveries.by_member.values() for c in contents)
    assert handled == Counter(m.content for m in sent), "each message handled exactly once"
    metrics = [m.get_metrics() for m in group]
    assert sum(m["handled_out"] for m in metrics) == len(sent)
    assert sum(m["claimed_elsewhere_out"] for m in metrics) == 2 * len(sent)
    for m in metrics:
        assert m["messages_out"] == m["handled_out"] + m["claimed_elsewhere_out"]


def test_another_group_and_an_ungrouped_bus_each_get_everything(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    deliveries = Deliveries()
    group = members(buses, redis_server, deliveries, 2)
    audit = Deliveries()
    others = []
    for name, extra in (("audit", {"group": "audit"}), ("plain", {})):
        other = create_bus(redis_config(redis_server, **extra))
        other.register_outbound_handler("telegram", audit.handler(name))
        buses.append(other)
        other.start()
        others.append(other)
    client = redis_server.client()
    for n in range(50):
        publish(client, str(n))
    client.close()
    assert deliveries.wait_for(50)
    assert audit.wait_for(100)
    settle(group + others, 50)
    assert deliveries.total() == 50
    assert sorted(map(len, audit.by_member.values())) == [50, 50]


def test_a_member_without_a_handler_for_the_channel_claims_nothing(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    deliveries = Deliveries()
    [handling] = members(buses, redis_server, deliveries, 1)
    idle = create_bus(redis_config(redis_server, group="web"))
    idle.register_outbound_handler("discord", lambda message: None)
    idle.register_outbound_handler("*", lambda message: None)
    idle.unregister_outbound_handlers("*")
    buses.append(idle)
    idle.start()
    client = redis_server.client()
    for n in range(30):
        publish(client, str(n))
    client.close()
    assert deliveries.wait_for(30)
    assert handling.wait_idle(WAIT)
    assert handling.get_metrics()["handled_out"] == 30
    assert idle.get_metrics()["claimed_elsewhere_out"] == 0


def test_group_is_a_fanout_option_checked_like_the_others(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError, match=r"bus.group must be a non-empty string, not ''"):
        create_bus(redis_config(redis_server, group=""))
    with pytest.raises(ConfigError, match=r"bus.claim_window must be a number >= 1\.0, not 0"):
        create_bus(redis_config(redis_server, group="web", claim_window=0))


def test_messages_without_an_id_are_each_handled_once(redis_server: RedisServer, buses: list[Bus]) -> None:
    """The wire allows an empty id: such messages must not all claim one key (and be lost to the group)."""
    deliveries = Deliveries()
    group = members(buses, redis_server, deliveries, 2)
    client = redis_server.client()
    for n in range(5):
        body = b'{"channel_id": "telegram", "content": "%d", "timestamp": "2026-01-01T00:00:0%dZ"}' % (n, n)
        assert client.publish("nekobot:bus:outbound:telegram", body) == 2
    client.close()
    assert deliveries.wait_for(5)
    settle(group, 5)
    handled = Counter(c for contents in deliveries.by_member.values() for c in contents)
    assert handled == Counter(str(n) for n in range(5))
