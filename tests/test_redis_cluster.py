"""Redis Cluster with global pub/sub: any node carries every channel, and the bus moves on when one dies.

The contract suite runs on a cluster too (``redis-cluster`` in conftest's
backend matrix); these are the config rules and the faults.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, ConfigError, Message, create_bus

from .conftest import cluster_config
from .redis_cluster import ClusterSet
from .test_bus_contract import assert_counts_add_up

WAIT = 20.0

pytestmark = pytest.mark.timeout(90)


def build(buses: list[Bus], config: dict[str, Any]) -> Bus:
    made = create_bus(config)
    buses.append(made)
    return made


NODES = ["127.0.0.1:7000", "127.0.0.1:7001"]


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"redis_cluster_nodes": []}, "bus.redis_cluster_nodes must be a non-empty list"),
        ({"redis_cluster_nodes": ["127.0.0.1:x"]}, "bus.redis_cluster_nodes: the port must be a number"),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "redis_url": "redis://h:1/0"},
            "bus.redis_cluster_nodes excludes bus.redis_url",
        ),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "redis_sentinels": NODES},
            "bus.redis_cluster_nodes excludes bus.redis_sentinels",
        ),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "redis_db": 2},
            "bus.redis_db must be 0 with bus.redis_cluster_nodes",
        ),
        ({"redis_cluster_nodes": NODES}, "'sharded' .the default on a cluster. is not built yet"),
        ({"redis_cluster_nodes": NODES, "cluster_pubsub": "both"}, "must be one of 'sharded', 'global'"),
        ({"cluster_pubsub": "global"}, "bus.cluster_pubsub needs bus.redis_cluster_nodes"),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "delivery": "queue"},
            "the queue delivery does not run on a Redis Cluster yet",
        ),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "raise_on_unrouted": True},
            "bus.raise_on_unrouted cannot work on redis-cluster://",
        ),
    ],
)
def test_a_bad_cluster_config_names_the_key(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus({"bus": {"type": "redis", **bus}})


def test_the_address_lists_the_nodes_and_never_a_password(shared_cluster: ClusterSet) -> None:
    bus = create_bus(cluster_config(shared_cluster, redis_password="hunter2"))
    shown = repr(bus) + str(bus.health())
    assert "redis-cluster://" + ",".join(shared_cluster.addresses()) in shown
    assert "hunter2" not in shown


def test_a_message_published_on_another_node_arrives(shared_cluster: ClusterSet, buses: list[Bus]) -> None:
    """The Go gateway may PUBLISH on any node: global pub/sub relays it to ours."""
    config = cluster_config(shared_cluster)
    bus = build(buses, config)
    got: list[Message] = []
    arrived = threading.Event()

    def handle(message: Message) -> None:
        got.append(message)
        arrived.set()

    bus.register_inbound_handler("telegram", handle)
    with bus:
        in_use = bus.health()["master"]
        other = next(node for node in shared_cluster.nodes if node.addr != in_use)
        with other.client() as client:
            channel = f"{config['bus']['prefix']}inbound:telegram"
            client.publish(channel, b'{"channel_id":"telegram","content":"hi"}')
        assert arrived.wait(WAIT)
    assert got[0].content == "hi"


def test_a_killed_node_under_load_and_the_bus_carries_on(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """Kill -9 the node the bus uses while it sends to itself: it moves to another node by itself;
    each message is handled, counted lost, or its send raised; and the counts add up."""
    bus = build(buses, cluster_config(cluster_set, send_timeout=5.0))
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    raised: list[str] = []
    stop_sending = threading.Event()

    def send() -> None:
        n = 0
        while not stop_sending.is_set():
            try:
                bus.send_inbound(Message(channel_id="telegram", content=str(n)))
            except BusConnectionError:
                raised.append(str(n))
            n += 1
            time.sleep(0.002)

    with bus:
        first = bus.health()["master"]
        victim = next(node for node in cluster_set.nodes if node.addr == first)
        sender = threading.Thread(target=send)
        sender.start()
        try:
            time.sleep(0.5)
            victim.stop()
            deadline = time.monotonic() + WAIT
            while not (bus.health()["subscribed"] and bus.health()["master"] != first):
                assert time.monotonic() < deadline, f"the bus did not move off {first}: {bus.health()}"
                time.sleep(0.05)
            moved_at = len(handled)
            time.sleep(1.0)
        finally:
            stop_sending.set()
            sender.join()
        assert len(handled) > moved_at + 50, "messages did not flow again after the bus moved"
        assert bus.wait_idle(WAIT)
        m = assert_counts_add_up(bus)
    sent = m["sent_in"]
    # A send that raised after writing may have been published, and handled.
    assert sent <= len(handled) + m["lost"] <= sent + len(raised), (len(handled), m["lost"], sent, raised)
    assert len(set(handled)) == len(handled), "a message was handled twice"


def test_a_paused_node_is_left_for_another(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """A node that accepts connections but does not answer: the reader's PING notices, and it moves on."""
    bus = build(buses, cluster_config(cluster_set))
    arrived = threading.Event()
    bus.register_inbound_handler("telegram", lambda m: arrived.set())
    with bus:
        first = bus.health()["master"]
        victim = next(node for node in cluster_set.nodes if node.addr == first)
        victim.pause()
        try:
            deadline = time.monotonic() + WAIT
            while not (bus.health()["subscribed"] and bus.health()["master"] != first):
                assert time.monotonic() < deadline, f"the bus stayed on the paused {first}: {bus.health()}"
                time.sleep(0.05)
            deadline = time.monotonic() + WAIT
            while not arrived.is_set():  # the first sends may still meet the paused node and raise
                assert time.monotonic() < deadline
                with contextlib.suppress(BusConnectionError):
                    bus.send_inbound(Message(channel_id="telegram"))
                arrived.wait(0.2)
        finally:
            victim.resume()
