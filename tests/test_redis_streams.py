"""The queue delivery (Redis Streams) against real redis-server processes: sharing, crashes, poison."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, BusConnectionError, Direction, Message, create_bus
from nekobot_bus.backends.redis import RedisStreamBus

from .agents import PREFIX, Agent, wait_until_handled
from .conftest import queue_config
from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
WAIT = 20.0


def new_bus(made: list[Bus], server: RedisServer, **bus: Any) -> RedisStreamBus:
    created = create_bus(queue_config(server, **bus))
    assert isinstance(created, RedisStreamBus)
    made.append(created)
    return created


class Recorder:
    """A handler that records contents and can be told to fail or block on some."""

    def __init__(self, fail_on: str = "", block_on: str = "", block_for: float = 0.0) -> None:
        self.contents: list[str] = []
        self.cond = threading.Condition()
        self.fail_on = fail_on
        self.block_on = block_on
        self.block_for = block_for

    def __call__(self, message: Message) -> None:
        if message.content == self.block_on:
            time.sleep(self.block_for)
        if message.content == self.fail_on:
            raise RuntimeError(f"cannot handle {message.content}")
        with self.cond:
            self.contents.append(message.content)
            self.cond.notify_all()

    def wait_for_count(self, count: int, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.contents) >= count, timeout)


def msg(content: str, session: str = "s1", channel: str = "telegram") -> Message:
    return Message(channel_id=channel, session_id=session, content=content)


def test_one_member_of_a_group_handles_each_message_and_each_group_gets_all(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    agents = [Recorder(), Recorder()]
    audit = Recorder()
    members = [new_bus(buses, redis_server, group="agents") for _ in agents]
    for member, recorder in zip(members, agents, strict=True):
        member.register_inbound_handler("telegram", recorder)
    audit_bus = new_bus(buses, redis_server, group="audit")
    audit_bus.register_inbound_handler("*", audit)
    for started in buses:
        started.start()
    sent = [str(n) for n in range(300)]
    members[0].send_many(Direction.INBOUND, [msg(c, session=f"s{int(c) % 10}") for c in sent])
    assert audit.wait_for_count(300)
    for started in buses:
        assert started.wait_idle(WAIT)
    handled = agents[0].contents + agents[1].contents
    assert sorted(handled, key=int) == sent
    assert agents[0].contents, "both members took a share"
    assert agents[1].contents, "both members took a share"
    assert sorted(audit.contents, key=int) == sent
    for recorder in agents:  # one consumer keeps each session's order
        for session in range(10):
            mine = [int(c) for c in recorder.contents if int(c) % 10 == session]
            assert mine == sorted(mine)
    totals = [bus.get_metrics() for bus in buses]
    assert sum(m["acked_in"] for m in totals[:2]) == 300
    assert totals[2]["acked_in"] == 300
    assert all(m["pending_in"] == 0 for m in totals)


def test_messages_sent_while_no_consumer_runs_are_handled_when_one_starts(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    gateway = new_bus(buses, redis_server)
    for n in range(5):
        gateway.send_inbound(msg(str(n)))  # no group, no consumer yet
    recorder = Recorder()
    agent = new_bus(buses, redis_server)
    agent.register_inbound_handler("telegram", recorder)
    with agent:
        assert recorder.wait_for_count(5)
        assert agent.wait_idle(WAIT)
    assert recorder.contents == ["0", "1", "2", "3", "4"]


def test_a_failing_message_is_retried_then_dead_lettered_and_the_rest_flow(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    recorder = Recorder(fail_on="poison")
    bus = new_bus(buses, redis_server, max_deliveries=3, retry_backoff=0.05)
    bus.register_inbound_handler("telegram", recorder)
    bus.start()
    bus.send_many(Direction.INBOUND, [msg("before"), msg("poison"), msg("after")])
    assert recorder.wait_for_count(2)
    assert bus.wait_idle(WAIT)
    assert recorder.contents == ["before", "after"]
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    [(_, fields)] = raw.xrange(bus.dead_letter_name(Direction.INBOUND, "telegram"))
    assert json.loads(fields[b"message"])["content"] == "poison"
    assert b"cannot handle poison" in fields[b"error"]
    assert b"delivery 3" in fields[b"error"]
    assert fields[b"group"] == b"nekobot"
    m = bus.get_metrics()
    assert (m["errors"], m["redelivered_in"], m["dead_lettered_in"], m["acked_in"]) == (3, 2, 1, 2)
    assert m["messages_in"] == m["handled_in"] == 3
    # Dead-lettering acknowledged it: nothing is left pending in the group.
    assert (
        redis_server.client().xpending(bus.stream_name(Direction.INBOUND, "telegram"), "nekobot")["pending"]
        == 0
    )


def test_an_entry_that_keeps_killing_its_consumers_is_dead_lettered_without_running(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    stream = f"{PREFIX}inbound:telegram"
    gateway = new_bus(buses, redis_server)
    gateway.send_inbound(msg("crashes every consumer"))
    raw.xgroup_create(stream, "nekobot", id="0")
    [[_, [(entry_id, _)]]] = raw.xreadgroup("nekobot", "ghost-1", {stream: ">"})
    raw.xclaim(stream, "nekobot", "ghost-2", 0, [entry_id])  # a second consumer died with it
    recorder = Recorder()
    agent = new_bus(buses, redis_server, max_deliveries=2, claim_idle=0.2)
    agent.register_inbound_handler("telegram", recorder)
    with agent:
        deadline = time.monotonic() + WAIT
        while agent.get_metrics()["dead_lettered_in"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.send_inbound(msg("next"))
        assert recorder.wait_for_count(1)
    assert recorder.contents == ["next"]
    [(_, fields)] = raw.xrange(f"{PREFIX}dead:inbound:telegram")
    assert fields[b"deliveries"] == b"3"
    assert b"without being acknowledged" in fields[b"error"]


def test_garbage_entries_are_counted_and_dead_lettered(redis_server: RedisServer, buses: list[Bus]) -> None:
    recorder = Recorder()
    bus = new_bus(buses, redis_server)
    bus.register_inbound_handler("telegram", recorder)
    bus.start()
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    stream = bus.stream_name(Direction.INBOUND, "telegram")
    for garbage in (b"not json", b"[1,2]", b'{"channel_id": 7}'):
        raw.xadd(stream, {"message": garbage})
    raw.xadd(stream, {"other": b"field"})
    bus.send_inbound(msg("good"))
    assert recorder.wait_for_count(1)
    assert bus.wait_idle(WAIT)
    assert recorder.contents == ["good"]
    m = bus.get_metrics()
    assert (m["decode_errors"], m["dead_lettered_in"], m["acked_in"]) == (4, 4, 1)
    assert raw.xlen(f"{PREFIX}dead:inbound:telegram") == 4


def test_a_slow_handler_keeps_its_entry_and_nobody_else_takes_it(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    slow = Recorder(block_on="slow", block_for=2.5)  # 2.5 x claim_idle
    other = Recorder()
    first = new_bus(buses, redis_server, claim_idle=1.0)
    first.register_inbound_handler("telegram", slow)
    first.start()
    first.send_inbound(msg("slow"))
    deadline = time.monotonic() + WAIT
    while first.get_metrics()["pending_in"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = new_bus(buses, redis_server, claim_idle=1.0)
    second.register_inbound_handler("telegram", other)
    second.start()
    assert slow.wait_for_count(1)
    assert first.wait_idle(WAIT)
    assert (slow.contents, other.contents) == (["slow"], [])
    assert second.get_metrics()["claimed_in"] == 0


def test_trimmed_pending_entries_are_counted(redis_server: RedisServer, buses: list[Bus]) -> None:
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    stream = f"{PREFIX}inbound:telegram"
    new_bus(buses, redis_server).send_many(Direction.INBOUND, [msg(f"old {n}") for n in range(50)])
    raw.xgroup_create(stream, "nekobot", id="0")
    [[_, taken]] = raw.xreadgroup("nekobot", "dead-consumer", {stream: ">"}, count=50)
    assert len(taken) == 50  # pending under a consumer that will never acknowledge
    trimming = new_bus(buses, redis_server, max_len=10)
    trimming.send_many(Direction.INBOUND, [msg(f"new {n}") for n in range(400)])
    assert raw.xlen(stream) <= 10 + 100  # MAXLEN ~ trims whole nodes of up to 100 entries
    recorder = Recorder()
    agent = new_bus(buses, redis_server, claim_idle=0.2)
    agent.register_inbound_handler("telegram", recorder)
    with agent:
        deadline = time.monotonic() + WAIT
        while agent.get_metrics()["trimmed"] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert agent.get_metrics()["trimmed"] == 50
    assert not any(c.startswith("old") for c in recorder.contents)


def test_what_a_stopped_consumer_held_or_queued_goes_to_the_others(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    gate = threading.Event()

    def stuck(message: Message) -> None:
        gate.wait(WAIT)

    first = create_bus(
        queue_config(redis_server, claim_idle=0.5, workers=2) | {"gateway": {"message_queue_size": 1}}
    )
    assert isinstance(first, RedisStreamBus)
    buses.append(first)
    first.register_inbound_handler("telegram", stuck)
    first.start()
    first.send_many(Direction.INBOUND, [msg(str(n)) for n in range(5)])  # one session: one worker
    deadline = time.monotonic() + WAIT
    while first.get_metrics()["pending_in"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    # One in the handler, one queued, one read and waiting for room in the queue.
    assert first.get_metrics()["pending_in"] == 3
    assert not first.stop(timeout=1.0, drain=False)  # the handler is still stuck
    gate.set()
    deadline = time.monotonic() + WAIT
    while first.get_metrics()["dropped_in"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the stuck worker finishes, then counts the queued message dropped
    held = first.get_metrics()
    assert (held["handled_in"], held["dropped_in"]) == (1, 1)
    # The one waiting for room was given back; the two the workers had stay pending in Redis.
    assert held["pending_in"] == 2
    recorder = Recorder()
    second = new_bus(buses, redis_server, claim_idle=0.5)
    second.register_inbound_handler("telegram", recorder)
    second.start()
    assert recorder.wait_for_count(5)  # the 3 it took are claimed, the 2 it never read are read
    assert sorted(recorder.contents) == ["0", "1", "2", "3", "4"]
    assert second.get_metrics()["claimed_in"] == 3


def test_busy_inbound_workers_do_not_hold_up_outbound(redis_server: RedisServer, buses: list[Bus]) -> None:
    gate = threading.Event()
    replies = Recorder()
    bus = create_bus(queue_config(redis_server, workers=1) | {"gateway": {"message_queue_size": 1}})
    assert isinstance(bus, RedisStreamBus)
    buses.append(bus)
    bus.register_inbound_handler("telegram", lambda m: gate.wait(WAIT))
    bus.register_outbound_handler("telegram", replies)
    bus.start()
    try:
        bus.send_many(Direction.INBOUND, [msg(str(n)) for n in range(5)])
        deadline = time.monotonic() + WAIT
        while bus.get_metrics()["messages_in"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # one in the stuck handler, one queued: inbound is full
        bus.send_outbound(msg("reply"))
        assert replies.wait_for_count(1, timeout=5.0)
        assert bus.get_metrics()["messages_in"] == 2  # the other three wait in Redis, not in memory
    finally:
        gate.set()
    assert bus.wait_idle(WAIT)
    assert bus.get_metrics()["handled_in"] == 5


def test_departed_consumers_that_hold_nothing_are_removed(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    stream = f"{PREFIX}inbound:telegram"
    raw.xgroup_create(stream, "nekobot", id="0", mkstream=True)
    raw.xreadgroup("nekobot", "departed", {stream: ">"}, count=1)  # holds nothing
    raw.xadd(stream, {"message": json.dumps({"channel_id": "telegram", "content": "held"})})
    raw.xreadgroup("nekobot", "died-holding", {stream: ">"}, count=1)
    bus = new_bus(buses, redis_server, claim_idle=0.2, max_deliveries=5)
    recorder = Recorder()
    bus.register_inbound_handler("telegram", recorder)
    with bus:
        assert recorder.wait_for_count(1)  # claimed from died-holding after claim_idle
        deadline = time.monotonic() + WAIT
        names: set[str] = set()
        while time.monotonic() < deadline:
            names = {c["name"].decode() for c in raw.xinfo_consumers(stream, "nekobot")}
            if names == {bus.consumer}:
                break
            time.sleep(0.1)
        assert names == {bus.consumer}  # both left after 10 x claim_idle with nothing held
    assert recorder.contents == ["held"]


def test_killed_connection_and_paused_server_then_delivery_resumes(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    recorder = Recorder()
    bus = new_bus(buses, redis_server)
    bus.register_inbound_handler("telegram", recorder)
    bus.start()
    bus.send_inbound(msg("first"))
    assert recorder.wait_for_count(1)
    raw: Any = redis_server.client()  # redis-py's reply types are too loose to index
    assert raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
    bus.send_inbound(msg("after kill"))
    assert recorder.wait_for_count(2)
    redis_server.pause()
    time.sleep(3.0)  # past the reader's socket timeout (block + health_check_timeout)
    redis_server.resume()
    bus.send_inbound(msg("after pause"))
    assert recorder.wait_for_count(3)
    assert recorder.contents == ["first", "after kill", "after pause"]
    assert bus.get_metrics()["reconnects"] >= 2
    assert bus.health()["connected"]


def test_a_restart_that_lost_everything_recreates_groups_and_streams(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    everything = Recorder()
    agent = new_bus(buses, redis_server)
    agent.register_inbound_handler("*", everything)  # finds streams through the senders' announcements
    agent.start()
    gateway = new_bus(buses, redis_server, send_timeout=10.0)
    gateway.send_inbound(msg("before", channel="discord"))
    assert everything.wait_for_count(1)
    redis_server.restart()  # no persistence: streams, groups and announcements are gone
    deadline = time.monotonic() + WAIT
    while len(everything.contents) < 2 and time.monotonic() < deadline:
        gateway.send_inbound(msg("after", channel="discord"))
        everything.wait_for_count(2, timeout=1.0)
    assert everything.contents[:2] == ["before", "after"]
    assert agent.get_metrics()["reconnects"] >= 1


def test_stop_is_bounded_with_the_server_down(redis_server: RedisServer, buses: list[Bus]) -> None:
    bus = new_bus(buses, redis_server, send_timeout=1.0)
    bus.register_inbound_handler("telegram", Recorder())
    bus.start()
    redis_server.stop()
    started = time.monotonic()
    bus.stop(timeout=3.0)
    assert time.monotonic() - started < 4.0
    with pytest.raises(Exception, match="stopped"):
        bus.send_inbound(msg("late"))


def test_nothing_sent_is_lost_across_a_redis_restart_with_persistence(
    tmp_path: Path, buses: list[Bus]
) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        recorder = Recorder()
        agent = new_bus(buses, server, dedup_window=60)
        agent.register_inbound_handler("telegram", recorder)
        agent.start()
        gateway = new_bus(buses, server, send_timeout=10.0)
        sent: list[str] = []
        unsure: list[str] = []
        for n in range(600):
            if n == 300:
                server.restart()  # SIGKILL, then the same port and data directory
            try:
                gateway.send_inbound(msg(str(n), session=f"s{n % 8}"))
                sent.append(str(n))
            except BusConnectionError:
                unsure.append(str(n))
        deadline = time.monotonic() + WAIT
        while not set(sent) <= set(recorder.contents) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = set(sent) - set(recorder.contents)
        assert not missing, f"{len(missing)} acknowledged sends never handled"
        assert set(recorder.contents) <= set(sent) | set(unsure)
        assert agent.get_metrics()["reconnects"] >= 1
        assert agent.wait_idle(WAIT)
    finally:
        for bus in buses:
            bus.stop(timeout=5)
        server.stop()


def test_three_agent_processes_share_10000_messages_from_two_gateways(
    redis_server: RedisServer, tmp_path: Path, buses: list[Bus]
) -> None:
    agents = [
        Agent(
            redis_server.addr, tmp_path / f"agent{n}.log", "--dedup", "60", "--channels", "telegram,discord"
        )
        for n in range(3)
    ]
    try:
        gateways = [new_bus(buses, redis_server) for _ in range(2)]
        sent: dict[str, list[Message]] = {
            channel: [
                msg(f"{channel} {n}", session=f"{channel}:{n % 50}", channel=channel) for n in range(5000)
            ]
            for channel in ("telegram", "discord")
        }

        def produce(bus: RedisStreamBus, messages: list[Message]) -> None:
            for i in range(0, len(messages), 500):
                bus.send_many(Direction.INBOUND, messages[i : i + 500])

        producers = [
            threading.Thread(target=produce, args=(bus, batch), name=f"gateway-{n}")
            for n, (bus, batch) in enumerate(zip(gateways, sent.values(), strict=True))
        ]
        for p in producers:
            p.start()
        for p in producers:
            p.join(WAIT)
        ids = {m.id for batch in sent.values() for m in batch}
        counts = wait_until_handled(agents, ids, 40.0)
        assert set(counts) == ids
        assert max(counts.values()) == 1, "a message was handled twice"
        metrics = [agent.finish() for agent in agents]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert all(m["handled_in"] > 0 for m in metrics), "every agent took a share"
    assert sum(m["handled_in"] for m in metrics) == 10_000
    assert sum(m["acked_in"] for m in metrics) == 10_000
    assert all(m["pending_in"] == 0 and m["errors"] == 0 for m in metrics)


def test_an_agent_killed_mid_burst_loses_nothing(
    redis_server: RedisServer, tmp_path: Path, buses: list[Bus]
) -> None:
    agents = [Agent(redis_server.addr, tmp_path / f"agent{n}.log", "--delay", "0.005") for n in range(3)]
    try:
        gateway = new_bus(buses, redis_server)
        burst = [msg(str(n), session=f"s{n % 40}") for n in range(600)]
        gateway.send_many(Direction.INBOUND, burst)
        deadline = time.monotonic() + WAIT
        while len(agents[0].handled()) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        agents[0].kill()
        killed_at = time.monotonic()
        ids = {m.id for m in burst}
        counts = wait_until_handled(agents, ids, 15.0)
        took = time.monotonic() - killed_at
        assert set(counts) == ids, f"{len(ids - set(counts))} messages never handled"
        # Only what the killed agent had handled but not yet acknowledged runs twice.
        twice = {i for i, n in counts.items() if n > 1}
        assert twice <= set(agents[0].handled())
        assert took < 1.0 + 10.0  # claim_idle plus a margin for this shared machine
        survivors = [agent.finish() for agent in agents[1:]]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert sum(m["claimed_in"] for m in survivors) >= 1


def in_session_order(handlings: list[tuple[float, str, str, int]]) -> dict[str, list[int]]:
    """Per session, the message numbers in the order they were first handled."""
    first: dict[str, tuple[float, str, int]] = {}
    for when, message_id, session, number in handlings:
        if message_id not in first or when < first[message_id][0]:
            first[message_id] = (when, session, number)
    order: dict[str, list[int]] = defaultdict(list)
    for _when, session, number in sorted(first.values()):
        order[session].append(number)
    return order


def test_shards_keep_each_session_in_order_across_the_consumers_of_a_group(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    handlings: list[tuple[float, str, str, int]] = []
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def handle(message: Message) -> None:
        time.sleep(0.002)  # long enough for the consumers' work to overlap
        with lock:
            handlings.append((time.monotonic(), message.id, message.session_id, int(message.content)))
        done.release()

    agents = [new_bus(buses, redis_server, group="agents", shards=6) for _ in range(3)]
    for agent in agents:
        agent.register_inbound_handler("telegram", handle)
        agent.start()
    deadline = time.monotonic() + WAIT
    while sorted(len(agent.health()["shards"]) for agent in agents) != [2, 2, 2]:
        assert time.monotonic() < deadline, "the agents never shared out the shards"
        time.sleep(0.05)
    gateway = new_bus(buses, redis_server, shards=6)
    sessions, per_session = 24, 30
    # All at once: without shards, consecutive messages of a session would run on several agents at once.
    gateway.send_many(
        Direction.INBOUND, [msg(str(n), session=f"s{s}") for n in range(per_session) for s in range(sessions)]
    )
    for _ in range(sessions * per_session):
        assert done.acquire(timeout=WAIT)
    order = in_session_order(handlings)
    assert len(order) == sessions
    for session, numbers in order.items():
        assert numbers == list(range(per_session)), session
    assert len(handlings) == sessions * per_session, "nothing was handled twice"
    handled = [agent.get_metrics()["handled_in"] for agent in agents]
    assert sum(handled) == sessions * per_session
    assert all(handled), "each agent took its shards' sessions"


def test_shards_keep_session_order_when_an_agent_is_killed(
    redis_server: RedisServer, tmp_path: Path, buses: list[Bus]
) -> None:
    agents = [
        Agent(
            redis_server.addr,
            tmp_path / f"agent{n}.log",
            "--shards",
            "4",
            "--delay",
            "0.005",
            "--channels",
            "telegram",
        )
        for n in range(3)
    ]
    try:
        gateway = new_bus(buses, redis_server, shards=4)
        sessions, per_session = 12, 40
        sent = 0
        for n in range(per_session):
            gateway.send_many(Direction.INBOUND, [msg(str(n), session=f"s{s}") for s in range(sessions)])
            sent += sessions
            if n == per_session // 2:
                agents[0].kill()  # whatever it held is claimed, in order, by whoever takes its shards
            time.sleep(0.03)
        ids_needed = sessions * per_session
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            handled = {line[0] for agent in agents for line in agent.lines()}
            if len(handled) >= ids_needed:
                break
            time.sleep(0.1)
        handlings = [
            (float(when), message_id, session, int(content))
            for agent in agents
            for message_id, content, session, when in agent.lines()
        ]
        order = in_session_order(handlings)
        assert sum(len(numbers) for numbers in order.values()) == sent
        for session, numbers in order.items():
            assert numbers == list(range(per_session)), session
        survivors = [agent.finish() for agent in agents[1:]]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert sum(m["handled_in"] for m in survivors) > 0


def test_a_sharded_agent_that_joins_gets_its_share_within_two_seconds(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    """With the default claim_idle (30 s): sharing does not wait for the lease's renewal period."""

    def holds(agent: RedisStreamBus) -> int:
        return len(agent.health()["shards"] or ())

    def wait_for(condition: Any, what: str, within: float) -> float:
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < within, f"{what} took more than {within} s"
            time.sleep(0.02)
        return time.monotonic() - started

    first, second = (
        new_bus(buses, redis_server, group="agents", shards=16, claim_idle=30.0) for _ in range(2)
    )
    for agent in (first, second):
        agent.register_inbound_handler("telegram", lambda message: None)
    first.start()
    wait_for(lambda: holds(first) == 16, "the first agent taking every shard", WAIT)
    second.start()
    wait_for(lambda: holds(first) == holds(second) == 8, "sharing with a new agent", 2.0)
    second.stop(WAIT)
    wait_for(lambda: holds(first) == 16, "taking back the shards of an agent that stopped", 2.0)
