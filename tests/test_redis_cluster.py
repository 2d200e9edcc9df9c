"""Redis Cluster: sharded pub/sub follows its channels' slots; global pub/sub moves on when a node dies.

The contract suite runs on a cluster too (``redis-cluster`` and
``redis-cluster-global`` in conftest's backend matrix); these are the
config rules and the faults.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, ConfigError, Message, create_bus
from nekobot_bus.backends.redis.client import Reachability
from nekobot_bus.backends.redis.topology import ClusterNodes
from nekobot_bus.metrics import Metrics

from .conftest import build, cluster_config
from .load import Handled, Load
from .redis_cluster import ClusterSet
from .redis_server import RedisServer
from .test_bus_contract import assert_counts_add_up

WAIT = 20.0

pytestmark = pytest.mark.timeout(90)


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
        ({"redis_cluster_nodes": NODES, "cluster_pubsub": "both"}, "must be one of 'sharded', 'global'"),
        ({"cluster_pubsub": "global"}, "bus.cluster_pubsub needs bus.redis_cluster_nodes"),
        (
            {"redis_cluster_nodes": NODES, "cluster_pubsub": "global", "delivery": "queue"},
            "bus.cluster_pubsub is for the fan-out delivery",
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
    config = cluster_config(shared_cluster, cluster_pubsub="global")
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
    bus = build(buses, cluster_config(cluster_set, cluster_pubsub="global", send_timeout=5.0))
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    with bus:
        first = bus.health()["master"]
        victim = next(node for node in cluster_set.nodes if node.addr == first)
        with Load(bus, every=0.002) as load:
            time.sleep(0.5)
            victim.stop()
            wait_for(
                lambda: bus.health()["subscribed"] and bus.health()["master"] != first,
                f"the bus did not move off {first}",
            )
            moved_at = len(handled)
            wait_for(lambda: len(handled) > moved_at + 50, "messages did not flow again after the bus moved")
        # A send that raised after writing may have been published, and handled.
        assert_each_once_and_accounted(bus, handled, load.refused)


def test_a_paused_node_is_left_for_another(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """A node that accepts connections but does not answer: the reader's PING notices, and it moves on."""
    bus = build(buses, cluster_config(cluster_set, cluster_pubsub="global"))
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


# -- sharded pub/sub ------------------------------------------------------------------


def wait_for(condition: Any, what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


#: A failover may count a few messages unrouted or lost that still arrive (README: Redis Cluster).
FAILOVER_OVERCOUNT = 10


def assert_each_once_and_accounted(
    bus: Bus, handled: list[str], raised: Collection[object], overcount: int = 0
) -> dict[str, int]:
    """Every message sent is handled once, or counted unrouted or lost: none silently lost, none twice.

    A send that raised may have been either; *overcount* messages may be counted and handled both.
    """
    assert bus.wait_idle(WAIT)
    m = assert_counts_add_up(bus)
    assert len(set(handled)) == len(handled), "a message was handled twice"
    accounted = len(handled) + m["unrouted"] + m["lost"]
    assert m["sent_in"] <= accounted <= m["sent_in"] + len(raised) + overcount, (
        str(m),
        len(handled),
        len(raised),
    )
    return m


def test_sharded_a_message_spublished_on_its_primary_arrives(
    shared_cluster: ClusterSet, buses: list[Bus]
) -> None:
    """Another program's SPUBLISH on the channel's primary reaches the bus, which holds it there alone."""
    config = cluster_config(shared_cluster)
    bus = build(buses, config)
    arrived = threading.Event()
    bus.register_inbound_handler("telegram", lambda message: arrived.set())
    channel = f"{config['bus']['prefix']}inbound:telegram"
    with bus:
        primary = shared_cluster.primary_of(channel)
        with primary.client() as client:
            assert client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
            assert client.execute_command("SPUBLISH", channel, b'{"channel_id":"telegram"}') == 1
        assert arrived.wait(WAIT)


def test_sharded_every_channel_reaches_a_wildcard_listener_once(
    shared_cluster: ClusterSet, buses: list[Bus]
) -> None:
    """ "*" on a sharded cluster: channels on all three primaries, each message once, the copies counted."""
    config = cluster_config(shared_cluster)
    listener = build(buses, config)
    sender = build(buses, config)
    exact = build(buses, config)
    everything: list[tuple[str, str]] = []
    only_telegram: list[str] = []
    listener.register_inbound_handler("*", lambda m: everything.append((m.channel_id, m.content)))
    exact.register_inbound_handler("telegram", lambda m: only_telegram.append(m.content))
    prefix = config["bus"]["prefix"]
    by_primary: dict[int, list[str]] = {}
    for n in range(100):  # two channels on each primary
        name = f"chat{n}"
        by_primary.setdefault(shared_cluster.primary_of(f"{prefix}inbound:{name}").port, []).append(name)
    assert len(by_primary) == 3
    channels = ["telegram", *(name for names in by_primary.values() for name in names[:2])]
    with listener, exact, sender:
        for n in range(20):
            sender.send_many("inbound", [Message(channel_id=c, content=str(n)) for c in channels])
        wait_for(lambda: len(everything) >= 20 * len(channels), f"only {len(everything)} arrived")
        assert listener.wait_idle(WAIT)
        assert exact.wait_idle(WAIT)
    assert sorted(everything) == sorted((c, str(n)) for c in channels for n in range(20))
    assert sorted(only_telegram, key=int) == [str(n) for n in range(20)]


def test_sharded_a_migrated_channel_still_delivers(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """Move the slot of a subscribed channel to another primary while messages flow: Redis unsubscribes
    the reader, which finds the new primary; sends follow MOVED; nothing is lost uncounted."""
    config = cluster_config(cluster_set, send_timeout=5.0)
    bus = build(buses, config)
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    channel = f"{config['bus']['prefix']}inbound:telegram"
    source = cluster_set.primary_of(channel)
    target = next(
        p for p in cluster_set.running() if p is not source and p.port in cluster_set.primary_ports()
    )
    with bus, Load(bus, every=0.002) as load:
        wait_for(lambda: len(handled) > 50, "messages did not flow before the migration")
        cluster_set.migrate_slot(cluster_set.slot_of(channel), source, target)
        with target.client() as client:
            wait_for(
                lambda: client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1, "no resubscribe"
            )
        moved_at = len(handled)
        wait_for(lambda: len(handled) > moved_at + 50, "messages did not flow after the migration")
    m = assert_each_once_and_accounted(bus, handled, load.refused)
    assert m["reconnects"] == 0, "a migration is not a broken connection"


def test_sharded_a_killed_primary_under_load_and_the_bus_carries_on(
    cluster_set: ClusterSet, buses: list[Bus]
) -> None:
    """Kill -9 the primary of a subscribed channel under load: its replica takes over, and the reader and
    the senders find it by themselves."""
    config = cluster_config(cluster_set, send_timeout=10.0)
    bus = build(buses, config)
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    channel = f"{config['bus']['prefix']}inbound:telegram"
    victim = cluster_set.primary_of(channel)
    with bus, Load(bus, every=0.002) as load:
        wait_for(lambda: len(handled) > 50, "messages did not flow before the kill")
        victim.stop()
        took = cluster_set.wait_until_replaced(victim)
        replaced_at = len(handled)
        wait_for(
            lambda: len(handled) > replaced_at + 50,
            f"messages did not flow after the failover ({took:.1f} s)",
        )
    assert_each_once_and_accounted(bus, handled, load.refused, FAILOVER_OVERCOUNT)


def test_sharded_a_manual_failover_is_followed(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """CLUSTER FAILOVER on the replica: the old primary becomes a replica and drops its subscribers."""
    config = cluster_config(cluster_set, send_timeout=10.0)
    bus = build(buses, config)
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    channel = f"{config['bus']['prefix']}inbound:telegram"
    primary = cluster_set.primary_of(channel)
    replica = cluster_set.replica_of(primary)
    with bus, Load(bus, every=0.002) as load:
        wait_for(lambda: len(handled) > 50, "messages did not flow before the failover")
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: cluster_set.primary_of(channel) is replica, "the replica did not take over")
        switched_at = len(handled)
        wait_for(lambda: len(handled) > switched_at + 50, "messages did not flow after the failover")
    assert_each_once_and_accounted(bus, handled, load.refused, FAILOVER_OVERCOUNT)


def test_a_prefix_with_braces_is_refused_on_a_cluster() -> None:
    with pytest.raises(ConfigError, match=r"bus\.redis_prefix must not hold braces on a Redis Cluster"):
        create_bus({"bus": {"type": "redis", "redis_cluster_nodes": NODES, "prefix": "app:{bus}:"}})


def test_tail_on_a_sharded_cluster_sees_every_channel(
    shared_cluster: ClusterSet, buses: list[Bus], tmp_path: Path
) -> None:
    """tail is a "*" listener there: senders copy for it while it runs, and it shows each message once."""
    config = cluster_config(shared_cluster)
    path = tmp_path / "bus.json"
    path.write_text(json.dumps(config))
    sender = build(buses, config)
    lease = f"{config['bus']['prefix']}every:inbound"
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nekobot_bus",
            "tail",
            "--config",
            str(path),
            "--inbound",
            "--json",
            "--count",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    copies = f"{config['bus']['prefix']}inbound:[every]"

    def tail_listens() -> bool:  # a global channel's subscribers are counted by the node they are on
        listening = 0
        for node in shared_cluster.running():
            with node.client() as client:
                listening += client.execute_command("PUBSUB", "NUMSUB", copies)[1]
        return listening == 1

    try:
        node = shared_cluster.primary_of(lease)
        with node.client() as client:
            wait_for(lambda: client.exists(lease), "tail set no '*' lease")
        wait_for(tail_listens, "tail never subscribed to the copies")
        time.sleep(0.6)  # a sender reads the lease at most every 0.5 s
        with sender:
            for channel in ("telegram", "discord", "slack"):
                sender.send_inbound(Message(channel_id=channel, content=f"to {channel}"))
            out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    seen = sorted((line["channel"], line["message"]["content"]) for line in map(json.loads, out.splitlines()))
    assert seen == [("discord", "to discord"), ("slack", "to slack"), ("telegram", "to telegram")]


def test_sharded_a_send_during_a_migration_still_arrives(cluster_set: ClusterSet, buses: list[Bus]) -> None:
    """A slot half migrated: its primary still serves the channel's subscribers, then the reader follows."""
    config = cluster_config(cluster_set)
    bus = build(buses, config)
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    channel = f"{config['bus']['prefix']}inbound:telegram"
    slot = cluster_set.slot_of(channel)
    source = cluster_set.primary_of(channel)
    target = next(
        p for p in cluster_set.running() if p is not source and p.port in cluster_set.primary_ports()
    )
    with bus:
        bus.send_inbound(Message(channel_id="telegram", content="before"))
        wait_for(lambda: handled == ["before"], "the first message did not arrive")
        start_migration(slot, source, target)
        bus.send_inbound(Message(channel_id="telegram", content="during"))
        wait_for(lambda: handled == ["before", "during"], f"got {handled}")
        cluster_set.migrate_slot(slot, source, target)  # finish it: the reader follows
        wait_for(lambda: bus.health()["subscribed"], "the reader did not follow the slot")
        bus.send_inbound(Message(channel_id="telegram", content="after"))
        wait_for(lambda: handled == ["before", "during", "after"], f"got {handled}")
    m = assert_each_once_and_accounted(bus, handled, [])
    assert m["unrouted"] == 0


def test_a_keyed_command_during_a_migration_follows_ask(cluster_set: ClusterSet) -> None:
    """A key its migrating slot's primary does not hold: ASK; the runner sends ASKING and the command to
    the importing node (the ASK reply is read from its text: redis-py 5.0 gives no node_addr)."""
    server = ClusterNodes([("127.0.0.1", node.port) for node in cluster_set.nodes])
    runner = server.runner(
        Metrics(), 5.0, Reachability(), socket_timeout=2, socket_connect_timeout=2, protocol=2
    )
    key = "ask-me"
    slot = cluster_set.slot_of(key)
    source = cluster_set.primary_of(key)
    target = next(
        p for p in cluster_set.running() if p is not source and p.port in cluster_set.primary_ports()
    )
    try:
        start_migration(slot, source, target)
        assert runner.run([("SET", key, b"moved")], "setting a key") == [b"OK"]
        with target.client() as client:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.get(key)
            assert pipe.execute()[1] == b"moved"
        with source.client() as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        runner.close()


def start_migration(slot: int, source: RedisServer, target: RedisServer) -> None:
    with source.client() as src, target.client() as dst:
        source_id = src.execute_command("CLUSTER", "MYID").decode()
        target_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)


# -- the queue delivery ---------------------------------------------------------------


def test_queue_keys_share_one_slot_on_a_cluster(shared_cluster: ClusterSet, buses: list[Bus]) -> None:
    """Streams, dead letters, the announced set, dedup keys: all in the slot of the prefix's hash tag."""
    config = cluster_config(shared_cluster, delivery="queue", dedup_window=60)
    bus = build(buses, config)
    bus.register_inbound_handler("telegram", lambda m: None)
    bus.register_inbound_handler("discord", lambda m: None)
    prefix = config["bus"]["prefix"]
    with bus:
        bus.send_inbound(Message(channel_id="telegram"))
        bus.send_inbound(Message(channel_id="discord"))
        assert bus.wait_idle(WAIT)
        node = shared_cluster.primary_of("{" + prefix + "}")
        with node.client() as client:
            keys = sorted(k.decode() for k in client.keys("{" + prefix + "}*"))
    assert f"{{{prefix}}}inbound:telegram" in keys
    assert f"{{{prefix}}}inbound:discord" in keys
    assert any(k.startswith(f"{{{prefix}}}done:") for k in keys)
    assert {shared_cluster.slot_of(k) for k in keys} == {shared_cluster.slot_of("{" + prefix + "}")}


def test_queue_an_acknowledged_send_survives_a_killed_primary(
    cluster_set: ClusterSet, buses: list[Bus]
) -> None:
    """Kill -9 the primary of the bus's slot under load: with min_replicas_ack 1 every send that
    returned is handled after its replica takes over; the bus carries on without a restart."""
    handled = Handled()
    config = cluster_config(
        cluster_set, delivery="queue", min_replicas_ack=1, send_timeout=10.0, claim_idle=2.0, dedup_window=60
    )
    agent = build(buses, config)
    agent.register_inbound_handler("telegram", handled)
    sender = build(buses, config)
    victim = cluster_set.primary_of("{" + config["bus"]["prefix"] + "}")
    with agent, sender, Load(sender) as load:
        time.sleep(1.0)
        victim.stop()
        took = cluster_set.wait_until_replaced(victim)
        replaced_at = time.monotonic()
        wait_for(
            lambda: any(t > replaced_at for t in handled.at), f"no message after the failover ({took:.1f} s)"
        )
        time.sleep(1.0)
    wait_for(
        lambda: set(load.acknowledged) <= set(handled.ids),
        f"acknowledged but never handled: {sorted(set(load.acknowledged) - set(handled.ids))[:10]}",
    )
    assert len(load.acknowledged) > 50
    # A send that raised may still have been stored (its WAIT timed out): handled, but never unsent.
    assert set(handled.ids) <= set(load.acknowledged) | {i for i, _ in load.refused}
