"""The NATS fan-out against a real nats-server: processes, groups, faults, and what is shown.

The contract suite runs on NATS too (``nats`` in conftest's backend matrix).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from nekobot_bus import (
    Bus,
    BusConnectionError,
    ConfigError,
    Direction,
    InvalidChannelError,
    Message,
    create_bus,
    encode,
)
from nekobot_bus._workqueue import WorkQueue
from nekobot_bus.backends.nats import NatsBase

from .conftest import nats_config
from .load import Load
from .nats_server import NatsServer

WAIT = 10.0

pytestmark = pytest.mark.timeout(60)


def build(buses: list[Bus], config: dict[str, Any]) -> NatsBase:
    made = create_bus(config)
    assert isinstance(made, NatsBase)
    buses.append(made)
    return made


class Collect:
    def __init__(self) -> None:
        self.contents: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self.cond:
            self.contents.append(message.content)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.contents) >= count, timeout)


def publish_raw(url: str, subject: str, payloads: list[bytes]) -> None:
    """What another program on the same NATS does: a bare nats-py client publishing bytes."""

    async def run() -> None:
        client = await nats.connect(url)
        for payload in payloads:
            await client.publish(subject, payload)
        await client.flush()
        await client.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"nats_url": "localhost:4222"}, r"bus.nats_url must start with nats:// or tls://"),
        ({"nats_url": "http://h:4222"}, r"bus.nats_url must start with nats:// or tls://"),
        ({"nats_url": "nats://h:99999"}, "the port must be a number from 1 to 65535"),
        ({"nats_url": []}, "a non-empty list of URLs"),
        ({"subject_prefix": "a.*.b"}, "bus.subject_prefix must be dot-separated NATS tokens"),
        ({"delivery": "stream"}, r"bus.delivery must be 'fanout' \(core NATS\) or 'queue' \(JetStream\)"),
        ({"delivery": "queue", "group": "a.b"}, r"bus.group 'a.b' cannot name a JetStream consumer"),
        ({"delivery": "queue", "claim_idle": 0}, "bus.claim_idle"),
        ({"delivery": "fanout", "max_deliveries": 3}, r"unknown key bus.max_deliveries"),
        ({"redis_addr": "h:1"}, r"unknown key bus.redis_addr.*; bus accepts: .*nats_url"),
        ({"dispatch": "inline"}, "dispatch 'inline' is for the local bus"),
    ],
)
def test_a_bad_config_names_the_key(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus({"bus": {"type": "nats", **bus}})


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_credentials_are_never_shown(
    tmp_path: Path, buses: list[Bus], caplog: pytest.LogCaptureFixture, delivery: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="nekobot_bus")
    server = NatsServer(tmp_path / "nats", "--user", "ann", "--pass", "right")
    server.start()
    url = f"nats://ann:hunter2@127.0.0.1:{server.port}"
    bus = build(
        buses,
        {
            "bus": {
                "type": "nats",
                "delivery": delivery,
                "nats_url": [url, "nats://s3cr3t-token@127.0.0.1:1"],
                "send_timeout": 0.5,
                "connect_timeout": 0.5,  # start() gives up after connect_timeout a server, plus send_timeout
            }
        },
    )
    try:
        try:  # before start: held for it, or refused
            bus.send_inbound(Message(channel_id="telegram"))
            early = "held"
        except BusConnectionError as exc:
            early = str(exc)
        with pytest.raises(BusConnectionError) as raised:  # a wrong password: refused
            bus.start()
    finally:
        server.stop()
    shown = f"{bus!r} {bus.health()} {early} {raised.value} {caplog.text}"
    assert "hunter2" not in shown
    assert "s3cr3t-token" not in shown
    assert f"nats://ann@127.0.0.1:{server.port}" in repr(bus)


def test_a_channel_id_that_is_not_one_subject_token_is_refused(
    nats_server: NatsServer, buses: list[Bus]
) -> None:
    bus = build(buses, nats_config(nats_server))
    with pytest.raises(InvalidChannelError, match=r"cannot be a NATS subject token: '\.'"):
        bus.register_inbound_handler("slack.team1", lambda message: None)
    with pytest.raises(InvalidChannelError, match="'>' is not allowed"):
        bus.send_inbound(Message(channel_id="a>b"))  # before start too: not held, refused
    assert bus.get_metrics()["messages_in"] == 0
    with bus, pytest.raises(InvalidChannelError, match="'>' is not allowed"):
        bus.send_inbound(Message(channel_id="a>b"))


def test_every_process_gets_every_message_and_a_group_shares_them(
    nats_server: NatsServer, buses: list[Bus]
) -> None:
    config = nats_config(nats_server)
    prefix = config["bus"]["subject_prefix"]
    plain = [build(buses, config) for _ in range(2)]
    grouped = [build(buses, nats_config(nats_server, subject_prefix=prefix, group="web")) for _ in range(3)]
    collected = {id(bus): Collect() for bus in [*plain, *grouped]}
    for bus in [*plain, *grouped]:
        bus.register_outbound_handler("telegram", collected[id(bus)])
        bus.start()
    sender = build(buses, nats_config(nats_server, subject_prefix=prefix))
    with sender:
        sender.send_many("outbound", [Message(channel_id="telegram", content=str(n)) for n in range(60)])
    for bus in plain:
        assert collected[id(bus)].wait_for(60)
    deadline = time.monotonic() + WAIT
    while sum(len(collected[id(b)].contents) for b in grouped) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    for bus in grouped:
        assert bus.wait_idle(WAIT)
    shares = [sorted(collected[id(b)].contents, key=int) for b in grouped]
    everything = [content for share in shares for content in share]
    assert sorted(everything, key=int) == [str(n) for n in range(60)], "the group got each message once"
    assert sum(1 for share in shares if share) >= 2, "one member took everything"


def test_payloads_from_other_programs_are_decoded_or_counted(
    nats_server: NatsServer, buses: list[Bus]
) -> None:
    config = nats_config(nats_server)
    bus = build(buses, config)
    got = Collect()
    bus.register_inbound_handler("*", got)
    subject = f"{config['bus']['subject_prefix']}.inbound.telegram"
    with bus:
        publish_raw(
            nats_server.url, subject, [encode(Message(channel_id="telegram", content="go")), b"\xff{"]
        )
        assert got.wait_for(1)
        deadline = time.monotonic() + WAIT
        while bus.get_metrics()["decode_errors"] < 1:
            assert time.monotonic() < deadline, "the garbage payload was not counted"
            time.sleep(0.02)
    assert got.contents == ["go"]


def test_the_bus_rides_out_a_server_restart(nats_server: NatsServer, buses: list[Bus]) -> None:
    bus = build(buses, nats_config(nats_server, send_timeout=3.0))
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    with bus:
        bus.send_inbound(Message(channel_id="telegram", content="before"))
        assert got.wait_for(1)
        nats_server.stop()
        started = time.monotonic()
        # Refused: nothing sent (the client knew it was disconnected), or not confirmed
        # (it did not know yet; it may still send it once reconnected).
        with pytest.raises(BusConnectionError, match=r"nothing was sent|did not confirm"):
            bus.send_inbound(Message(channel_id="telegram", content="during"))
        assert time.monotonic() - started < 3.0 + 1.0
        assert bus.health()["connected"] is False
        nats_server.start()
        deadline = time.monotonic() + WAIT
        while not bus.health()["connected"]:
            assert time.monotonic() < deadline, "the bus did not reconnect"
            time.sleep(0.05)
        bus.send_inbound(Message(channel_id="telegram", content="after"))  # resubscribed by itself
        assert bus.wait_idle(WAIT)
        assert "after" in got.contents
    assert [c for c in got.contents if c != "during"] == ["before", "after"]
    assert got.contents.count("during") <= 1  # at most once
    m = bus.get_metrics()
    assert m["reconnects"] >= 1
    assert m["connection_errors"] >= 1
    assert (m["sent_in"], m["handled_in"]) == (2, len(got.contents))


def test_a_restart_under_load_counts_each_message_once(nats_server: NatsServer, buses: list[Bus]) -> None:
    """Sends to itself while the server restarts: each message is handled once or counted lost (by the
    marker after the reconnect), or its send raised; none is counted lost and handled both."""
    bus = build(buses, nats_config(nats_server, send_timeout=3.0))
    handled: list[str] = []
    bus.register_inbound_handler("telegram", lambda m: handled.append(m.content))
    with bus:
        with Load(bus, every=0.002) as load:
            time.sleep(0.5)
            nats_server.restart()
            deadline = time.monotonic() + WAIT
            while not bus.health()["connected"]:
                assert time.monotonic() < deadline, "the bus did not reconnect"
                time.sleep(0.05)
            back_at = len(handled)
            while len(handled) < back_at + 50:
                assert time.monotonic() < deadline, "messages did not flow after the restart"
                time.sleep(0.05)
        assert bus.wait_idle(WAIT)
    m = bus.get_metrics()
    assert len(set(handled)) == len(handled), "a message was handled twice"
    accounted = len(handled) + m["lost"]
    assert m["sent_in"] <= accounted <= m["sent_in"] + len(load.refused), (m, len(handled), len(load.refused))


def test_sends_fail_at_once_in_an_outage_older_than_send_timeout(
    nats_server: NatsServer, buses: list[Bus]
) -> None:
    bus = build(buses, nats_config(nats_server, send_timeout=1.0))
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        nats_server.stop()
        time.sleep(1.3)
        started = time.monotonic()
        with pytest.raises(BusConnectionError, match="unreachable for"):
            bus.send_inbound(Message(channel_id="telegram"))
        assert time.monotonic() - started < 0.3


def test_a_paused_server_makes_sends_raise_within_send_timeout(
    nats_server: NatsServer, buses: list[Bus]
) -> None:
    bus = build(buses, nats_config(nats_server, send_timeout=1.0))
    bus.register_inbound_handler("telegram", lambda message: None)
    with bus:
        nats_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BusConnectionError):
                bus.send_inbound(Message(channel_id="telegram"))
            assert time.monotonic() - started < 2.5
        finally:
            nats_server.resume()


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_stop_is_bounded_with_the_server_down(
    nats_server: NatsServer, buses: list[Bus], delivery: str
) -> None:
    bus = build(buses, nats_config(nats_server, delivery=delivery))
    bus.register_inbound_handler("telegram", lambda message: None)
    bus.start()
    nats_server.stop()
    started = time.monotonic()
    bus.stop(timeout=3.0)
    assert time.monotonic() - started < 4.0
    assert not [t for t in threading.enumerate() if t.name.startswith("nekobot-bus-nats")]


@pytest.mark.parametrize("delivery", ["fanout", "queue"])
def test_a_start_that_fails_leaves_no_thread_and_a_later_start_sends_what_waited(
    tmp_path: Path, buses: list[Bus], delivery: str
) -> None:
    server = NatsServer(tmp_path / "nats")  # not started yet
    bus = build(buses, nats_config(server, send_timeout=1.0, connect_timeout=0.2, delivery=delivery))
    got = Collect()
    bus.register_inbound_handler("telegram", got)
    bus.send_inbound(Message(channel_id="telegram", content="held"))
    before = set(threading.enumerate())
    with pytest.raises(BusConnectionError, match="could not connect to NATS"):
        bus.start()
    assert set(threading.enumerate()) <= before, "a failed start left a thread"
    server.start()
    try:
        bus.start()
        assert got.wait_for(1), "the message sent before the failed start was lost"
        assert bus.stop(WAIT)
    finally:
        server.stop()
    assert got.contents == ["held"]


def test_a_slow_consumer_past_its_limits_counts_what_it_drops(
    shared_nats: NatsServer, buses: list[Bus]
) -> None:
    """A burst larger than the subscription may hold for busy workers (intake_bytes, which is
    also the client's pending limit): each message is handled or counted dropped, none is silent."""
    config = nats_config(shared_nats, intake_bytes=8192, workers=1)
    prefix = config["bus"]["subject_prefix"]
    receiver = build(buses, config)
    sender = build(buses, nats_config(shared_nats, subject_prefix=prefix))
    handled: list[str] = []

    def slow(message: Message) -> None:
        time.sleep(0.002)
        handled.append(message.content)

    receiver.register_inbound_handler("telegram", slow)
    burst = [Message(channel_id="telegram", content=str(n) + "x" * 200) for n in range(1000)]
    with receiver, sender:
        sender.send_many("inbound", burst)
        deadline = time.monotonic() + WAIT
        m = receiver.get_metrics()
        while m["handled_in"] + m["dropped_in"] < len(burst) and time.monotonic() < deadline:
            time.sleep(0.05)
            m = receiver.get_metrics()
        assert receiver.wait_idle(WAIT)
    m = receiver.get_metrics()
    assert m["dropped_in"] > 0, "the burst fit: the test proves nothing"
    assert m["handled_in"] + m["dropped_in"] == m["messages_in"] == len(burst)
    assert len(handled) == m["handled_in"]


@pytest.mark.parametrize("channel", ["telegram", "*"])
def test_a_lone_message_is_handed_over_to_its_worker_and_a_burst_is_not(
    shared_nats: NatsServer, buses: list[Bus], monkeypatch: pytest.MonkeyPatch, channel: str
) -> None:
    """The loop waits for an idle worker to take a message only when nothing waits behind it: a
    hand-over per message of a burst would cap the loop at a few tens of thousands a second."""
    handed: list[int] = []
    wait_taken = WorkQueue._wait_taken

    def counted(queue: WorkQueue[Any], waiter: threading.Lock) -> None:
        handed.append(1)
        wait_taken(queue, waiter)

    monkeypatch.setattr(WorkQueue, "_wait_taken", counted)
    config = nats_config(shared_nats, workers=1)
    bus = build(buses, config)
    collect = Collect()
    bus.register_inbound_handler(channel, collect)
    burst = [Message(channel_id="telegram", content=str(n)) for n in range(2000)]
    with bus:
        worker_queue = bus._dispatchers[Direction.INBOUND]._queues[0]
        for n in range(5):
            deadline = time.monotonic() + WAIT
            while not worker_queue._worker_waiting and time.monotonic() < deadline:
                time.sleep(0.001)
            bus.send_inbound(Message(channel_id="telegram", content=f"lone {n}"))
            assert collect.wait_for(n + 1)
        assert len(handed) == 5  # the worker was idle each time, and nothing came behind
        bus.send_many("inbound", burst)
        assert collect.wait_for(5 + len(burst))
        assert bus.wait_idle(WAIT)
    # Each read of the socket ends with a message nothing waits behind: a few hand-overs, not
    # one a message (a loaded machine makes the reads, and so the bursts, smaller).
    assert len(handed) < 5 + len(burst) // 2, f"{len(handed) - 5} of the burst's 2000 were handed over"
    assert bus.get_metrics()["handled_in"] == 5 + len(burst)


def test_a_send_is_confirmed_by_a_ping_written_after_its_publish(tmp_path: Path, buses: list[Bus]) -> None:
    # nats-py writes a flush's PING straight to the socket, ahead of the PUB still in its buffer:
    # the server's trace (-V) shows the order in which it read the bus's commands.
    server = NatsServer(tmp_path / "traced", "-V")
    server.start()
    try:
        bus = build(buses, nats_config(server))
        subject = bus.subjects.messages(Direction.INBOUND, "ordered")
        bus.start()
        bus.send_inbound(Message(channel_id="ordered", content="x"))
        bus.stop()
        read = [
            line.split("<<- [", 1)[1]
            for line in (server.directory / "nats.log").read_text().splitlines()
            if "<<- [" in line
        ]
    finally:
        server.stop()
    publishes = [i for i, command in enumerate(read) if command.startswith(f"PUB {subject} ")]
    assert len(publishes) == 1, read
    assert read[publishes[0] + 1].startswith("PING"), read
