"""Sentinel: the bus finds the master through the sentinels and follows a failover by itself.

The contract suite runs on Sentinel too (``redis-sentinel`` and
``redis-queue-sentinel`` in conftest's backend matrix); these are the faults.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, ConfigError, Message, create_bus

from .conftest import build, sentinel_config
from .load import Handled, Load
from .redis_sentinel import FAST_SYNC, SentinelSet
from .redis_server import RedisServer
from .test_bus_contract import assert_counts_add_up

WAIT = 20.0
#: The sentinels replace a killed master within this (about 2 s; 8 s when their first vote splits).
FAILOVER = 20.0
#: Once the sentinels name the new master, the bus works on it within this.
RECOVERY = 5.0

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"redis_sentinels": []}, "bus.redis_sentinels must be a non-empty list"),
        ({"redis_sentinels": "127.0.0.1:26379"}, "bus.redis_sentinels must be a non-empty list"),
        ({"redis_sentinels": ["127.0.0.1:port"]}, "bus.redis_sentinels: the port must be a number"),
        ({"redis_sentinels": ["127.0.0.1:26379"]}, "needs bus.redis_sentinel_master"),
        (
            {"redis_sentinels": ["127.0.0.1:26379"], "redis_sentinel_master": "m", "redis_addr": "h:1"},
            "bus.redis_sentinels excludes bus.redis_url and bus.redis_addr",
        ),
        ({"redis_sentinel_master": "m"}, "need bus.redis_sentinels"),
    ],
)
def test_a_bad_sentinel_config_names_the_key(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus({"bus": {"type": "redis", **bus}})


def test_the_address_shows_the_sentinels_and_never_a_password(shared_sentinels: SentinelSet) -> None:
    config = sentinel_config(shared_sentinels, redis_password="hunter2", redis_sentinel_password="s3cret")
    bus = create_bus(config)
    shown = repr(bus) + str(bus.health())
    assert "sentinel://127.0.0.1:" in shown
    assert "hunter2" not in shown
    assert "s3cret" not in shown


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_health_names_the_master_in_use(
    shared_sentinels: SentinelSet, buses: list[Bus], delivery: str
) -> None:
    bus = build(buses, sentinel_config(shared_sentinels, delivery=delivery))
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        assert bus.health()["master"] == f"127.0.0.1:{shared_sentinels.master_port()}"


def wait_for_failover(sentinels: SentinelSet, old_master: int, replicas: int = 1) -> float:
    """Wait until the sentinels settle on a master other than *old_master*; return when.

    Settle: on a loaded machine a second failover may follow the first.
    """
    deadline = time.monotonic() + FAILOVER
    while sentinels.master_port() == old_master:
        assert time.monotonic() < deadline, f"the sentinels did not fail over within {FAILOVER} s"
        time.sleep(0.05)
    sentinels.wait_until_settled(max(0.0, deadline - time.monotonic()), replicas=replicas)
    return time.monotonic()


def test_fanout_carries_on_after_the_master_is_killed(sentinel_set: SentinelSet, buses: list[Bus]) -> None:
    handled = Handled()
    bus = build(buses, sentinel_config(sentinel_set, send_timeout=5.0, health_check_interval=0.2))
    bus.register_inbound_handler("telegram", handled)
    old_master = sentinel_set.master_port()
    with bus, Load(bus) as load:
        time.sleep(1.0)
        sentinel_set.server_on(old_master).stop()  # kill -9
        failed_over_at = wait_for_failover(sentinel_set, old_master)
        deadline = failed_over_at + RECOVERY
        while not [t for t in handled.at if t > failed_over_at]:
            assert time.monotonic() < deadline, (
                f"no message handled within {RECOVERY} s of the failover; health {bus.health()}; "
                f"refused {load.refused[-3:]}"
            )
            time.sleep(0.05)
        time.sleep(1.0)  # a second of traffic on the new master
    assert bus.wait_idle(WAIT)
    assert bus.health()["master"] == f"127.0.0.1:{sentinel_set.master_port()}"
    assert sentinel_set.master_port() != old_master
    # At most once: what was in flight at the kill may be gone; nothing arrives twice, nothing unsent.
    assert len(set(handled.ids)) == len(handled.ids)
    assert set(handled.ids) <= set(load.acknowledged)
    after = [i for i in load.acknowledged if int(i[2:]) > int(load.acknowledged[-1][2:]) - 50]
    assert set(after) <= set(handled.ids), "messages sent on the new master were lost"
    m = assert_counts_add_up(bus)
    assert m["handled_in"] == len(handled.ids)
    assert m["reconnects"] >= 1


def test_an_acknowledged_queue_send_survives_the_loss_of_the_master(
    sentinel_set: SentinelSet, buses: list[Bus]
) -> None:
    handled = Handled()
    config = sentinel_config(
        sentinel_set, delivery="queue", min_replicas_ack=1, send_timeout=5.0, claim_idle=2.0, dedup_window=60
    )
    agent = build(buses, config)
    agent.register_inbound_handler("telegram", handled)
    sender = build(buses, sentinel_config(sentinel_set, **{**config["bus"], "type": "redis"}))
    old_master = sentinel_set.master_port()
    with agent, sender, Load(sender) as load:
        time.sleep(1.0)
        sentinel_set.server_on(old_master).stop()
        failed_over_at = wait_for_failover(sentinel_set, old_master)
        while not [t for t in handled.at if t > failed_over_at]:
            assert time.monotonic() < failed_over_at + RECOVERY, (
                "the queue did not recover after the failover"
            )
            time.sleep(0.05)
        time.sleep(1.0)
    deadline = time.monotonic() + WAIT
    while not set(load.acknowledged) <= set(handled.ids):
        assert time.monotonic() < deadline, (
            f"acknowledged but never handled: {sorted(set(load.acknowledged) - set(handled.ids))[:10]}"
        )
        time.sleep(0.1)
    assert len(load.acknowledged) > 100
    # A refused send may still have reached the master (WAIT timed out): handled, but never unsent.
    assert set(handled.ids) <= set(load.acknowledged) | {i for i, _ in load.refused}
    assert agent.get_metrics()["reconnects"] >= 1


def test_a_manual_failover_is_followed_without_an_error(sentinel_set: SentinelSet, buses: list[Bus]) -> None:
    """SENTINEL FAILOVER: the old master keeps running as a replica; sends go to the new one."""
    handled = Handled()
    bus = build(buses, sentinel_config(sentinel_set, delivery="queue", send_timeout=8.0, claim_idle=2.0))
    bus.register_inbound_handler("telegram", handled)
    old_master = sentinel_set.master_port()
    with bus:
        bus.send_inbound(Message(id="before", channel_id="telegram"))
        sentinel_set.failover()
        wait_for_failover(sentinel_set, old_master, replicas=2)
        for n in range(20):  # no error: a demoted master's READONLY is sent again to the new one
            bus.send_inbound(Message(id=f"after-{n}", channel_id="telegram"))
        assert bus.wait_idle(WAIT)
    assert sorted(handled.ids) == sorted(["before", *(f"after-{n}" for n in range(20))])


def test_readonly_is_sent_again_and_written_once(tmp_path: Path, buses: list[Bus]) -> None:
    """A connection to a master that became a replica: the send waits for a master, then writes once."""
    primary, other = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    for server in (primary, other):
        server.directory.mkdir()
        server.start()
    try:
        bus = build(
            buses,
            {"bus": {"type": "redis", "delivery": "queue", "redis_addr": primary.addr, "send_timeout": 5.0}},
        )
        bus.start()
        bus.send_inbound(Message(id="first", channel_id="telegram"))  # a pooled connection to primary
        admin: Any = primary.client()
        admin.execute_command("REPLICAOF", "127.0.0.1", other.port)  # demoted; our connection stays open
        back = threading.Timer(1.0, lambda: admin.execute_command("REPLICAOF", "NO", "ONE"))
        back.start()
        try:
            started = time.monotonic()
            bus.send_inbound(Message(id="second", channel_id="telegram"))
            waited = time.monotonic() - started
        finally:
            back.join()
        assert 0.8 < waited < 5.0, f"the send returned after {waited:.2f} s"
        entries = admin.xrange("nekobot:bus:inbound:telegram")
        assert [e[1][b"message"].count(b'"second"') for e in entries].count(1) == 1
        admin.close()
        bus.stop(WAIT)
        assert bus.get_metrics()["sent_in"] == 2
    finally:
        primary.stop()
        other.stop()


def test_readonly_until_the_deadline_raises_and_writes_nothing(tmp_path: Path, buses: list[Bus]) -> None:
    primary, other = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    for server in (primary, other):
        server.directory.mkdir()
        server.start()
    try:
        config = {"type": "redis", "delivery": "queue", "redis_addr": primary.addr, "send_timeout": 1.0}
        bus = build(buses, {"bus": config})
        admin: Any = primary.client()
        admin.execute_command("REPLICAOF", "127.0.0.1", other.port)
        with pytest.raises(BusConnectionError, match="READONLY"):
            bus.send_many("inbound", [Message(channel_id="telegram")])  # straight to Redis, start or not
        assert admin.exists("nekobot:bus:inbound:telegram") == 0
        admin.close()
    finally:
        primary.stop()
        other.stop()


def test_readonly_resends_the_whole_send_with_min_replicas_ack(tmp_path: Path, buses: list[Bus]) -> None:
    """A demoted master refuses the XADD (READONLY) and the WAIT (ERR): the send goes again as a whole."""
    primary, other = RedisServer(tmp_path / "a", *FAST_SYNC), RedisServer(tmp_path / "b", *FAST_SYNC)
    for server in (primary, other):
        server.directory.mkdir()
        server.start()
    replica = RedisServer(tmp_path / "r", "--replicaof", "127.0.0.1", str(primary.port), *FAST_SYNC)
    replica.directory.mkdir()
    replica.start()
    try:
        admin: Any = primary.client()
        deadline = time.monotonic() + WAIT
        while admin.info("replication").get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        config = {"type": "redis", "delivery": "queue", "redis_addr": primary.addr, "send_timeout": 5.0}
        bus = build(buses, {"bus": {**config, "min_replicas_ack": 1}})
        bus.start()
        bus.send_inbound(Message(id="first", channel_id="telegram"))
        admin.execute_command("REPLICAOF", "127.0.0.1", other.port)
        back = threading.Timer(1.0, lambda: admin.execute_command("REPLICAOF", "NO", "ONE"))
        back.start()
        try:
            bus.send_inbound(Message(id="second", channel_id="telegram"))
        finally:
            back.join()
        entries = admin.xrange("nekobot:bus:inbound:telegram")
        assert [e[1][b"message"].count(b'"second"') for e in entries].count(1) == 1
        admin.close()
        assert bus.stop(WAIT)
        assert bus.get_metrics()["replica_ack_timeouts"] == 0
    finally:
        for server in (replica, primary, other):
            server.stop()
