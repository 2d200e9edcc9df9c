"""The queue delivery on JetStream against real nats-server processes: sharing, crashes, poison."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from nekobot_bus import Bus, BusConnectionError, Direction, Message, codec, create_bus
from nekobot_bus.backends.nats import NatsQueueBus

from .agents import Agent, wait_until_handled
from .conftest import nats_config
from .load import Load, wait_for_metric
from .nats_server import NatsServer

WAIT = 20.0


def queue_bus(buses: list[Bus], server: NatsServer, prefix: str, **bus: Any) -> NatsQueueBus:
    config = nats_config(server, **({"delivery": "queue", "claim_idle": 1.0, "retry_backoff": 0.05} | bus))
    config["bus"]["subject_prefix"] = prefix
    made = create_bus(config)
    assert isinstance(made, NatsQueueBus)
    buses.append(made)
    return made


def msg(content: str, session: str = "s1", channel: str = "telegram") -> Message:
    return Message(channel_id=channel, session_id=session, content=content)


def new_prefix() -> str:
    return f"q{uuid.uuid4().hex[:8]}.bus"


class Collect:
    """A handler that records contents; it can be told to fail on some, or to take its time."""

    def __init__(self, fail_on: str = "", delay: float = 0.0) -> None:
        self.contents: list[str] = []
        self.fail_on = fail_on
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        if self.delay:
            time.sleep(self.delay)
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


def read_stream(url: str, stream: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message of *stream*: subject, payload, headers (a bare nats-py client, as an operator would)."""

    async def run() -> list[tuple[str, bytes, dict[str, str]]]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            info = await js.stream_info(stream)
            found = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await js.get_msg(stream, seq)
                found.append((raw.subject or "", raw.data or b"", dict(raw.headers or {})))
            return found
        finally:
            await client.close()

    return asyncio.run(run())


def publish_raw(url: str, subject: str, payload: bytes) -> None:
    async def run() -> None:
        client = await nats.connect(url)
        try:
            await client.jetstream().publish(subject, payload)
        finally:
            await client.close()

    asyncio.run(run())


def test_two_agent_processes_share_the_work_each_message_once(
    shared_nats: NatsServer, tmp_path: Path, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    agents = [Agent(shared_nats.url, tmp_path / f"agent{n}.log", prefix=prefix) for n in range(2)]
    try:
        gateway = queue_bus(buses, shared_nats, prefix)
        with gateway:
            burst = [msg(str(n), session=f"s{n % 20}") for n in range(2000)]
            for i in range(0, len(burst), 250):
                gateway.send_many(Direction.INBOUND, burst[i : i + 250])
            ids = {m.id for m in burst}
            counts = wait_until_handled(agents, ids, WAIT)
        assert set(counts) == ids
        assert max(counts.values()) == 1, "a message was handled twice"
        metrics = [agent.finish() for agent in agents]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert all(m["handled_in"] > 0 for m in metrics), "every agent took a share"
    assert sum(m["handled_in"] for m in metrics) == sum(m["acked_in"] for m in metrics) == 2000
    assert all(m["pending_in"] == 0 and m["errors"] == 0 for m in metrics)


def test_an_agent_killed_mid_burst_leaves_its_messages_to_the_others(
    shared_nats: NatsServer, tmp_path: Path, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    agents = [
        Agent(shared_nats.url, tmp_path / f"agent{n}.log", "--delay", "0.005", prefix=prefix)
        for n in range(3)
    ]
    try:
        gateway = queue_bus(buses, shared_nats, prefix)
        with gateway:
            burst = [msg(str(n), session=f"s{n % 40}") for n in range(600)]
            gateway.send_many(Direction.INBOUND, burst)
            deadline = time.monotonic() + WAIT
            while len(agents[0].handled()) < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            agents[0].kill()
            killed_at = time.monotonic()
            ids = {m.id for m in burst}
            counts = wait_until_handled(agents, ids, WAIT)
            took = time.monotonic() - killed_at
        assert set(counts) == ids, f"{len(ids - set(counts))} messages never handled"
        # Only what the killed agent had handled but not yet acknowledged runs twice.
        assert {i for i, n in counts.items() if n > 1} <= set(agents[0].handled())
        assert took < 1.0 + 10.0  # claim_idle plus a margin for this shared machine
        survivors = [agent.finish() for agent in agents[1:]]
    finally:
        for agent in agents:
            agent.ensure_dead()
    assert all(m["pending_in"] == 0 for m in survivors)


def test_a_server_restart_loses_no_stored_message(nats_server: NatsServer, buses: list[Bus]) -> None:
    prefix = new_prefix()
    agent = queue_bus(buses, nats_server, prefix, send_timeout=3.0)
    gateway = queue_bus(buses, nats_server, prefix, send_timeout=3.0)
    got = Collect()
    agent.register_inbound_handler("telegram", got)
    stored: list[str] = []
    unsure: list[str] = []
    with agent, gateway:
        for n in range(300):
            if n == 100:
                nats_server.restart()  # SIGKILL, then the same port and JetStream store
            try:
                gateway.send_inbound(msg(str(n), session=f"s{n % 8}"))
                stored.append(str(n))
            except BusConnectionError:
                unsure.append(str(n))
        deadline = time.monotonic() + WAIT
        while not set(stored) <= set(got.contents) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = set(stored) - set(got.contents)
        assert not missing, f"{len(missing)} confirmed sends never handled"
        assert set(got.contents) <= set(stored) | set(unsure)
        assert agent.wait_idle(WAIT)
    assert agent.get_metrics()["reconnects"] >= 1
    assert len(stored) >= 200


def test_garbage_is_counted_and_dead_lettered_and_the_rest_flows(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    bus = queue_bus(buses, shared_nats, prefix)
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    with bus:
        publish_raw(shared_nats.url, f"{prefix}.inbound.telegram", b"\xff not json")
        bus.send_inbound(msg("fine"))
        assert got.wait_for(1)
        assert bus.wait_idle(WAIT)
    m = bus.get_metrics()
    assert (m["decode_errors"], m["dead_lettered_in"], m["handled_in"], m["acked_in"]) == (1, 1, 1, 1)
    [(subject, payload, headers)] = read_stream(shared_nats.url, bus.names.dead_stream)
    assert subject == f"{prefix}.dead.inbound.telegram"
    assert payload == b"\xff not json"
    assert headers["Nekobot-Reason"].startswith("undecodable: payload is not JSON")
    assert headers["Nekobot-Subject"] == f"{prefix}.inbound.telegram"


def test_a_poison_message_is_dead_lettered_after_max_deliveries(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    bus = queue_bus(buses, shared_nats, prefix, max_deliveries=3)
    got = Collect(fail_on="poison")
    bus.register_inbound_handler("telegram", got)
    with bus:
        poison = msg("poison")
        bus.send_inbound(poison)
        bus.send_inbound(msg("after", session="s2"))
        assert got.wait_for(4)
        assert bus.wait_idle(WAIT)
    assert got.contents.count("poison") == 3
    m = bus.get_metrics()
    assert (m["errors"], m["redelivered_in"], m["dead_lettered_in"], m["acked_in"]) == (3, 2, 1, 1)
    [(subject, payload, headers)] = read_stream(shared_nats.url, bus.names.dead_stream)
    assert subject == f"{prefix}.dead.inbound.telegram"
    assert codec.decode(payload) == poison
    assert headers["Nekobot-Deliveries"] == "1"  # JetStream delivered it once; the retries ran here
    assert "cannot handle poison" in headers["Nekobot-Reason"]
    assert "on delivery 3" in headers["Nekobot-Reason"]


def test_a_handler_slower_than_claim_idle_keeps_its_message(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    slow = queue_bus(buses, shared_nats, prefix, claim_idle=0.5)
    other = queue_bus(buses, shared_nats, prefix, claim_idle=0.5)
    slow_got, other_got = Collect(delay=2.0), Collect()
    slow.register_inbound_handler("telegram", slow_got)
    with slow:
        slow.send_inbound(msg("slow"))
        wait_for_metric(slow, "pending_in", 1)
        other.register_inbound_handler("telegram", other_got)
        with other:
            assert slow.wait_idle(WAIT)
            assert other.wait_idle(WAIT)
    # Reported in progress, so never redelivered to the other member.
    assert (slow_got.contents, other_got.contents) == (["slow"], [])
    assert slow.get_metrics()["acked_in"] == 1


def test_a_second_send_of_one_id_within_the_dedup_window_is_stored_once(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    bus = queue_bus(buses, shared_nats, new_prefix(), dedup_window=60)
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    with bus:
        once = msg("once")
        bus.send_inbound(once)
        bus.send_many(Direction.INBOUND, [once, msg("other")])
        assert got.wait_for(2)
        assert bus.wait_idle(WAIT)
    assert sorted(got.contents) == ["once", "other"]
    m = bus.get_metrics()
    assert (m["sent_in"], m["duplicates_in"], m["handled_in"]) == (3, 1, 2)


def test_another_group_reads_every_message_again(shared_nats: NatsServer, buses: list[Bus]) -> None:
    prefix = new_prefix()
    first = queue_bus(buses, shared_nats, prefix, group="first")
    audit = queue_bus(buses, shared_nats, prefix, group="audit")
    first_got, audit_got = Collect(), Collect()
    first.register_inbound_handler("telegram", first_got)
    audit.register_inbound_handler("*", audit_got)
    with first, audit:
        first.send_many(Direction.INBOUND, [msg(str(n)) for n in range(50)])
        first.send_inbound(msg("discord", channel="discord"))
        assert first.wait_idle(WAIT)
        assert audit.wait_idle(WAIT)
    assert first_got.contents == [str(n) for n in range(50)]
    assert sorted(audit_got.contents) == sorted([*first_got.contents, "discord"])


def test_each_channel_keeps_at_most_max_len_messages(shared_nats: NatsServer, buses: list[Bus]) -> None:
    prefix = new_prefix()
    sender = queue_bus(buses, shared_nats, prefix, max_len=5)
    with sender:
        sender.send_many(Direction.INBOUND, [msg(str(n)) for n in range(12)])
        sender.send_inbound(msg("d", channel="discord"))
    late = queue_bus(buses, shared_nats, prefix, max_len=5)
    got = Collect()
    late.register_inbound_handler("*", got)
    with late:
        assert got.wait_for(6)
        assert late.wait_idle(WAIT)
    assert sorted(got.contents) == sorted(["7", "8", "9", "10", "11", "d"])  # the oldest went, per channel


def test_messages_sent_before_any_consumer_wait_for_the_group(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    gateway = queue_bus(buses, shared_nats, prefix)
    gateway.send_inbound(msg("before start"))  # stored at once, over a connection of its own
    assert gateway.get_metrics()["sent_in"] == 1
    with gateway:
        gateway.send_inbound(msg("running"))
    agent = queue_bus(buses, shared_nats, prefix)
    got = Collect()
    agent.register_inbound_handler("telegram", got)
    with agent:
        assert got.wait_for(2)
        assert agent.wait_idle(WAIT)
    assert got.contents == ["before start", "running"]


def test_unregistering_gives_held_messages_back_to_the_group(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    leaving = queue_bus(buses, shared_nats, prefix, workers=1)
    staying = queue_bus(buses, shared_nats, prefix)
    gate = threading.Event()
    leaving.register_inbound_handler("telegram", lambda message: gate.wait(WAIT))
    got = Collect()
    staying.register_inbound_handler("telegram", got)
    with leaving:
        leaving.send_many(Direction.INBOUND, [msg(str(n)) for n in range(20)])
        wait_for_metric(leaving, "pending_in", 20)
        leaving.unregister_inbound_handlers("telegram")
        gate.set()
        with staying:
            assert got.wait_for(19)  # all but the one a handler held when it went
            assert staying.wait_idle(WAIT)
    m = leaving.get_metrics()
    assert m["handled_in"] + len(got.contents) >= 20
    assert m["pending_in"] == 0


def test_a_message_on_no_channels_subject_is_dead_lettered_not_redelivered_for_ever(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    bus = queue_bus(buses, shared_nats, prefix, claim_idle=0.5)
    got = Collect()
    bus.register_inbound_handler("*", got)  # its consumer reads prefix.inbound.>, "a.b" too
    with bus:
        publish_raw(shared_nats.url, f"{prefix}.inbound.a.b", codec.encode(msg("stray")))
        bus.send_inbound(msg("fine"))
        assert got.wait_for(1)
        time.sleep(1.0)  # two ack waits: a stray left unsettled would have come again
        assert bus.wait_idle(WAIT)
    m = bus.get_metrics()
    assert got.contents == ["fine"]
    assert (m["decode_errors"], m["dead_lettered_in"], m["acked_in"]) == (1, 1, 1)
    [(subject, _, headers)] = read_stream(shared_nats.url, bus.names.dead_stream)
    assert subject == f"{prefix}.dead.inbound.unknown"
    assert headers["Nekobot-Subject"] == f"{prefix}.inbound.a.b"


def test_a_draining_stop_under_steady_traffic_keeps_time_for_the_workers(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    prefix = new_prefix()
    agent = queue_bus(buses, shared_nats, prefix)
    gateway = queue_bus(buses, shared_nats, prefix)
    got = Collect(delay=0.002)
    agent.register_inbound_handler("telegram", got)
    with gateway:
        agent.start()
        with Load(gateway, every=0.001):
            time.sleep(0.5)
            started = time.monotonic()
            assert agent.stop(timeout=3.0), "the workers were not left time to finish"
            took = time.monotonic() - started
    assert took < 3.5
    m = agent.get_metrics()
    assert m["dropped_in"] == 0
    assert m["handled_in"] == m["acked_in"] == len(got.contents)
