"""bus.request on every backend: each request gets its own reply, once; timeouts and stop end it.

On a remote backend the agent is a second bus of the same config (another
process, as far as the server can tell); on the local one it is the same bus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from nekobot_bus import (
    BusClosedError,
    BusFullError,
    BusNotStartedError,
    LocalBus,
    Message,
    RequestTimeoutError,
)
from nekobot_bus.bus import Bus

from .conftest import BusFactory
from .load import wait_for_metric

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


def _echo(agent: Bus) -> None:
    agent.register_inbound_handler("webhook", lambda m: agent.send_outbound(m.reply(f"echo {m.content}")))


@pytest.fixture
def pair(make_bus: BusFactory, backend_config: dict[str, Any]) -> Iterator[tuple[Bus, Bus]]:
    """(requester, agent), both running; one bus on a local backend."""
    requester = make_bus()
    agent = requester if backend_config["bus"].get("type", "local") == "local" else make_bus()
    _echo(agent)
    with agent, requester:
        yield requester, agent


def _request_counts(bus: Bus) -> dict[str, int]:
    m = bus.get_metrics()
    keys = ("requests", "request_replies", "request_timeouts", "request_failures", "requests_pending")
    counts = {key: m[key] for key in keys}
    ended = counts["request_replies"] + counts["request_timeouts"] + counts["request_failures"]
    assert counts["requests"] == ended + counts["requests_pending"], counts
    return counts


def test_200_requests_from_16_threads_each_get_their_own_reply(pair: tuple[Bus, Bus]) -> None:
    requester, _ = pair
    asked = [Message(channel_id="webhook", session_id=f"s{n % 7}", content=str(n)) for n in range(200)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda m: requester.request(m, timeout=WAIT), asked))
    for question, reply in zip(asked, replies, strict=True):
        assert (reply.reply_to, reply.content, reply.session_id) == (
            question.id,
            f"echo {question.content}",
            question.session_id,
        )
    counts = _request_counts(requester)
    assert (counts["requests"], counts["request_replies"], counts["requests_pending"]) == (200, 200, 0)


def test_the_reply_also_reaches_the_requesters_outbound_handlers(pair: tuple[Bus, Bus]) -> None:
    requester, _ = pair
    seen: list[Message] = []
    requester.register_outbound_handler("webhook", seen.append)
    reply = requester.request(Message(channel_id="webhook", content="hi"), timeout=WAIT)
    assert requester.wait_idle(WAIT)
    assert seen == [reply]


def test_a_reply_that_never_comes_raises_after_the_timeout_and_leaves_nothing_pending(
    pair: tuple[Bus, Bus],
) -> None:
    requester, _ = pair
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"within 0\.3 s") as raised:
        requester.request(Message(channel_id="unanswered", content="anyone?"), timeout=0.3)
    assert isinstance(raised.value, TimeoutError)
    assert 0.3 <= time.monotonic() - started < 5.0
    counts = _request_counts(requester)
    assert (counts["request_timeouts"], counts["requests_pending"]) == (1, 0)


def test_stop_wakes_every_waiter_with_bus_closed(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.start()
    outcomes: list[BaseException] = []

    def ask(n: int) -> None:
        try:
            bus.request(Message(channel_id="unanswered", content=str(n)), timeout=WAIT)
        except Exception as exc:  # the outcome is what this test looks at
            outcomes.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    wait_for_metric(bus, "requests_pending", 5)
    started = time.monotonic()
    assert bus.stop(timeout=10)
    for thread in threads:
        thread.join(WAIT)
    assert time.monotonic() - started < 5.0
    assert len(outcomes) == 5
    assert all(isinstance(e, BusClosedError) for e in outcomes), outcomes
    counts = _request_counts(bus)
    assert (counts["request_failures"], counts["requests_pending"]) == (5, 0)
    with pytest.raises(BusClosedError):
        bus.request(Message(channel_id="unanswered"), timeout=1)


def test_pending_requests_are_bounded(make_bus: BusFactory) -> None:
    bus = make_bus(bus={"max_requests": 2})
    with bus:

        def ask() -> None:
            with pytest.raises(BusClosedError):
                bus.request(Message(channel_id="unanswered"), timeout=WAIT)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for_metric(bus, "requests_pending", 2)
        with pytest.raises(BusFullError, match=r"bus\.max_requests"):
            bus.request(Message(channel_id="unanswered"), timeout=WAIT)
        started = time.monotonic()
        assert bus.stop(timeout=10)
        for thread in threads:
            thread.join(WAIT)
        # Also a request still waiting for its channel's subscription when the bus stopped.
        assert time.monotonic() - started < 3.0
    counts = _request_counts(bus)
    assert (counts["requests"], counts["request_failures"]) == (2, 2), "the refused one was never opened"


def test_a_reply_still_reaches_the_outbound_handlers_it_would_reach_without_a_request(
    pair: tuple[Bus, Bus], backend_config: dict[str, Any]
) -> None:
    requester, agent = pair
    delivered: list[str] = []
    agent.register_outbound_handler("webhook", lambda m: delivered.append(m.reply_to))
    asked = [Message(channel_id="webhook", session_id=f"s{n}", content=str(n)) for n in range(20)]
    for question in asked:
        assert requester.request(question, timeout=WAIT).reply_to == question.id
    assert agent.wait_idle(WAIT)
    assert requester.wait_idle(WAIT)
    assert sorted(delivered) == sorted(m.id for m in asked), "a request took a reply away from its handler"
    if backend_config["bus"].get("delivery") == "queue":
        assert requester.get_metrics()["messages_out"] == 0, "a queue member took outbound messages"


def test_a_request_before_start_is_refused_saying_why(make_bus: BusFactory) -> None:
    bus = make_bus()
    with pytest.raises(BusNotStartedError, match="before a request"):
        bus.request(Message(channel_id="webhook"), timeout=1)
    assert bus.get_metrics()["requests"] == 0


def test_a_reply_that_comes_as_the_timeout_fires_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply's thread has taken the request, not yet ended it, when the timeout fires."""
    bus = LocalBus()
    _echo(bus)
    ending = threading.Event()
    count = bus._metrics.incr

    def slow_reply_count(key: str, amount: int = 1) -> None:
        if key == "request_replies":
            ending.wait(WAIT)  # between taking the request and ending it
        count(key, amount)

    monkeypatch.setattr(bus._metrics, "incr", slow_reply_count)
    with bus:
        threading.Timer(0.5, ending.set).start()
        reply = bus.request(Message(channel_id="webhook", content="late"), timeout=0.1)
    assert reply.content == "echo late"
    counts = _request_counts(bus)
    assert (counts["request_replies"], counts["request_timeouts"]) == (1, 0)
