"""Requests on the Redis queue delivery under faults: its reply reader cut off, garbage in the stream."""

from __future__ import annotations

import threading

import pytest

from nekobot_bus import Message
from nekobot_bus.bus import Bus

from .conftest import build, queue_config
from .redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


def _agent_and_requester(buses: list[Bus], redis_server: RedisServer) -> tuple[Bus, Bus]:
    agent = build(buses, queue_config(redis_server))
    agent.register_inbound_handler("webhook", lambda m: agent.send_outbound(m.reply(f"echo {m.content}")))
    requester = build(buses, queue_config(redis_server))
    agent.start()
    requester.start()
    return agent, requester


def test_a_request_after_every_connection_was_killed_gets_its_reply(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    _, requester = _agent_and_requester(buses, redis_server)
    assert requester.request(Message(channel_id="webhook", content="1"), timeout=WAIT).content == "echo 1"
    raw = redis_server.client()
    assert raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 2
    for n in range(2, 12):
        assert (
            requester.request(Message(channel_id="webhook", content=str(n)), timeout=WAIT).content
            == f"echo {n}"
        )
    assert requester.get_metrics()["request_replies"] == 11
    assert requester.get_metrics()["reconnects"] >= 1


def test_an_entry_that_is_not_a_message_before_the_reply_is_passed_over(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    agent, requester = _agent_and_requester(buses, redis_server)
    raw = redis_server.client()
    stream = "nekobot:bus:outbound:webhook"
    agent.unregister_inbound_handlers("webhook")

    def garbage_then_reply(m: Message) -> None:
        raw.xadd(stream, {"message": b"\xff not json"})
        raw.xadd(stream, {"other": b"field"})
        agent.send_outbound(m.reply("after the garbage"))

    agent.register_inbound_handler("webhook", garbage_then_reply)
    assert requester.request(Message(channel_id="webhook"), timeout=WAIT).content == "after the garbage"


def test_a_reply_written_while_the_requester_was_cut_off_is_read_when_it_is_back(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    """Streams keep their entries: an outage delays the reply and loses none."""
    agent, requester = _agent_and_requester(buses, redis_server)
    requester.request(Message(channel_id="webhook"), timeout=WAIT)  # the reply reader runs
    raw = redis_server.client()
    agent.unregister_inbound_handlers("webhook")

    cut: list[str] = []

    def cut_then_reply(m: Message) -> None:
        # The requester's reply reader is cut; the agent writes the reply before it is back.
        for client in raw.client_list():
            if client["cmd"] == "xread":
                raw.client_kill_filter(_id=client["id"])
                cut.append(client["id"])
        agent.send_outbound(m.reply("while cut"))

    agent.register_inbound_handler("webhook", cut_then_reply)
    assert requester.request(Message(channel_id="webhook"), timeout=WAIT).content == "while cut"
    assert len(cut) == 1, "the reply reader was not cut"


def test_the_reply_reader_runs_only_once_a_request_was_made(
    redis_server: RedisServer, buses: list[Bus]
) -> None:
    def reply_readers() -> int:
        return sum(t.name == "nekobot-bus-redis-queue-replies" for t in threading.enumerate())

    before = reply_readers()  # another test's, still ending, would count
    _, requester = _agent_and_requester(buses, redis_server)
    assert reply_readers() == before
    requester.request(Message(channel_id="webhook"), timeout=WAIT)
    assert reply_readers() == before + 1
