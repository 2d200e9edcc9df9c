"""Faults a review found in the queue delivery, each against a real redis-server."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from nekobot_bus import Bus, ConfigError, Message, create_bus, encode
from nekobot_bus.backends.redis import RedisStreamBus

from .conftest import queue_config
from .load import wait_for_metric
from .redis_server import RedisServer
from .test_redis_streams import WAIT, Recorder, msg, new_bus


def stream(direction: str = "inbound", channel: str = "telegram") -> str:
    return f"nekobot:bus:{direction}:{channel}"


def test_a_failing_sessions_retry_does_not_hold_back_other_sessions(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server, workers=1, retry_backoff=2.0, max_deliveries=2)
    seen: dict[str, float] = {}
    failed_once = threading.Event()
    done = threading.Event()

    def handler(message: Message) -> None:
        if message.content == "fails" and not failed_once.is_set():
            failed_once.set()
            raise RuntimeError("first delivery fails")
        seen[message.content] = time.monotonic()
        if len(seen) == 4:
            done.set()

    bus.register_inbound_handler("telegram", handler)
    with bus:
        bus.send_inbound(msg("fails", session="slow"))
        assert failed_once.wait(WAIT)
        started = time.monotonic()
        bus.send_inbound(msg("behind", session="slow"))
        for n in range(2):
            bus.send_inbound(msg(f"other-{n}", session=f"fast-{n}"))
        assert done.wait(WAIT)
        assert bus.wait_idle(WAIT)
    # One worker: the other sessions went on while "fails" waited its 2 s.
    assert max(seen["other-0"], seen["other-1"]) - started < 1.0
    # The failing session kept its order: the retry first, then what was behind it.
    assert seen["fails"] - started >= 1.5
    assert seen["behind"] > seen["fails"]
    metrics = bus.get_metrics()
    assert metrics["redelivered_in"] == 1
    assert metrics["acked_in"] == 4
    assert metrics["pending_in"] == 0


def test_a_group_destroyed_under_the_bus_is_created_again_and_nothing_later_is_missed(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    seen = Recorder()
    bus.register_inbound_handler("telegram", seen)
    client = redis_server.client()
    with bus:
        bus.send_inbound(msg("before"))
        assert seen.wait_for_count(1)
        assert bus.wait_idle(WAIT)
        client.xgroup_destroy(stream(), "nekobot")
        for n in range(20):
            bus.send_inbound(msg(f"after-{n}"))
        assert seen.wait_for_count(21)
        assert bus.wait_idle(WAIT)
    # Recreated from the stream's start: "before" may come again (at least once).
    assert {f"after-{n}" for n in range(20)} <= set(seen.contents)
    [group] = client.xinfo_groups(stream())
    assert group["pending"] == 0
    client.close()


def test_acknowledgements_redis_did_not_take_are_not_counted_acked(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server)
    gate = threading.Event()
    handled: list[str] = []

    def slow(message: Message) -> None:
        gate.wait(WAIT)
        handled.append(message.content)

    bus.register_inbound_handler("telegram", slow)
    client = redis_server.client()
    with bus:
        bus.send_inbound(msg("held"))
        wait_for_metric(bus, "pending_in", 1)
        client.flushall()  # as after a failover to an empty replica: stream and group are gone
        gate.set()
        wait_for_metric(bus, "ack_failed_in", 1)
        bus.send_inbound(msg("later"))
        assert bus.wait_idle(WAIT)
    assert handled == ["held", "later"]
    metrics = bus.get_metrics()
    assert (metrics["ack_failed_in"], metrics["acked_in"]) == (1, 1)
    client.close()


def test_an_aborted_dead_letter_transaction_is_retried_not_counted(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    bus = new_bus(buses, redis_server, max_deliveries=1)
    gate = threading.Event()

    def fails(message: Message) -> None:
        gate.wait(WAIT)
        raise RuntimeError("always")

    bus.register_inbound_handler("telegram", fails)
    client = redis_server.client()
    with bus:
        bus.send_inbound(msg("poison"))
        wait_for_metric(bus, "pending_in", 1)
        # No memory for anything new: the XADD inside MULTI is refused, and EXEC aborts.
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        gate.set()
        time.sleep(1.0)
        assert bus.get_metrics()["dead_lettered_in"] == 0
        assert client.xlen("nekobot:bus:dead:inbound:telegram") == 0
        client.config_set("maxmemory", 0)
        assert bus.wait_idle(WAIT)
    assert bus.get_metrics()["dead_lettered_in"] == 1
    assert client.xlen("nekobot:bus:dead:inbound:telegram") == 1
    client.close()


def test_taking_over_a_dead_shard_owners_entries_pages_through_all_of_them(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    count = 10_500
    client = redis_server.client()
    sharded = f"{stream()}[0]"
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        body = Message(channel_id="telegram", session_id="one", content=str(n))
        pipe.xadd(sharded, {"message": encode(body)})
    pipe.execute()
    client.xgroup_create(sharded, "nekobot", id="0")
    # A consumer that read everything and died: all of it is pending under its name.
    client.xreadgroup("nekobot", "dead-consumer", {sharded: ">"}, count=count)
    assert client.xpending(sharded, "nekobot")["pending"] == count
    bus = new_bus(buses, redis_server, shards=1, claim_idle=30.0, dedup_window=0, max_deliveries=5)
    seen = Recorder()
    bus.register_inbound_handler("telegram", seen)
    with bus:
        assert seen.wait_for_count(count, timeout=60)
        assert bus.wait_idle(60)
    assert [int(c) for c in seen.contents] == list(range(count)), "taken over in order, all of them"
    assert client.xpending(sharded, "nekobot")["pending"] == 0
    client.close()


@pytest.mark.timeout(90)
def test_lua_scripts_run_by_digest_and_survive_a_script_flush(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    client = redis_server.client()
    bus = new_bus(buses, redis_server, shards=2, claim_idle=0.4)
    seen = Recorder()
    bus.register_inbound_handler("telegram", seen)
    with bus:
        bus.send_inbound(msg("one"))
        assert seen.wait_for_count(1)
        client.script_flush()
        time.sleep(0.5)  # past a lease renewal (claim_idle / 4), which now meets NOSCRIPT
        bus.send_inbound(msg("two"))
        assert seen.wait_for_count(2)
        assert bus.wait_idle(WAIT)
        assert bus.get_metrics()["reconnects"] == 0
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] > 0
    assert "cmdstat_eval" not in stats
    client.close()


def test_config_keys_a_delivery_does_not_use_are_refused(redis_server: RedisServer) -> None:
    config: dict[str, Any] = queue_config(redis_server, health_check_interval=1.0)
    with pytest.raises(
        ConfigError, match=r"unknown key bus.health_check_interval.*; bus accepts: .*claim_idle"
    ):
        create_bus(config)
    with pytest.raises(ConfigError, match=re.escape("bus.claim_idle must be a number >= 0.05, not 0")):
        create_bus(queue_config(redis_server, claim_idle=0))
    with pytest.raises(ConfigError, match=re.escape("bus.group must be a non-empty string, not ''")):
        create_bus(queue_config(redis_server, group=""))
    with pytest.raises(ConfigError, match=re.escape("claim_idle must be a number >= 0.05, not -1")):
        RedisStreamBus(redis_server.url, claim_idle=-1)
