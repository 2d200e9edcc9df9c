"""nekobot_bus.aio: coroutine handlers in session order, awaited requests, and a loop that never waits.

The loop's responsiveness is measured with a ticker: a task that sleeps
5 ms at a time and notes how late it wakes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from nekobot_bus import (
    Bus,
    BusClosedError,
    BusConnectionError,
    BusFullError,
    Message,
    RequestTimeoutError,
    create_bus,
)
from nekobot_bus.aio import AsyncBus, create_async_bus

from .conftest import BusFactory, redis_config
from .redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0
ON = ["local", "local-inline", "redis", "redis-queue", "nats-queue", "mqtt"]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class Ticker:
    """How late a task that sleeps 5 ms at a time wakes, at worst: how long the loop was held."""

    PERIOD = 0.005

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.PERIOD)
            self.worst = max(self.worst, time.monotonic() - before - self.PERIOD)


@pytest.mark.parametrize("backend_config", ON, indirect=True)
def test_2000_messages_through_coroutine_handlers_in_session_order(make_bus: BusFactory) -> None:
    async def test() -> None:
        loop_thread = threading.current_thread()
        seen: dict[str, list[int]] = defaultdict(list)
        elsewhere: list[str] = []

        async with AsyncBus(make_bus()) as bus:

            async def handle(message: Message) -> None:
                if threading.current_thread() is not loop_thread:
                    elsewhere.append(threading.current_thread().name)
                await asyncio.sleep(0)  # other coroutines run meanwhile; the session waits
                seen[message.session_id].append(int(message.content))

            bus.register_inbound_handler("telegram", handle)
            sent = [
                Message(channel_id="telegram", session_id=f"s{n % 8}", content=str(n)) for n in range(2000)
            ]
            for start in range(0, 2000, 100):
                await bus.send_many("inbound", sent[start : start + 100])
            assert await bus.wait_idle(WAIT)
            metrics = bus.get_metrics()
        assert not elsewhere, "a coroutine handler ran off its loop"
        assert sum(len(v) for v in seen.values()) == 2000
        for session, numbers in seen.items():
            assert numbers == sorted(numbers), f"session {session} out of order"
        assert (metrics["messages_in"], metrics["handled_in"], metrics["errors"]) == (2000, 2000, 0)

    run(test)


@pytest.mark.parametrize("backend_config", ON, indirect=True)
def test_200_awaited_requests_each_get_their_own_reply(make_bus: BusFactory) -> None:
    async def test() -> None:
        async with AsyncBus(make_bus()) as bus:

            async def echo(message: Message) -> None:
                await bus.send_outbound(message.reply(f"echo {message.content}"))

            bus.register_inbound_handler("webhook", echo)
            asked = [
                Message(channel_id="webhook", session_id=f"s{n % 5}", content=str(n)) for n in range(200)
            ]
            replies = await asyncio.gather(*(bus.request(m, timeout=WAIT) for m in asked))
            metrics = bus.get_metrics()
        for question, reply in zip(asked, replies, strict=True):
            assert (reply.reply_to, reply.content) == (question.id, f"echo {question.content}")
        assert (metrics["request_replies"], metrics["requests_pending"]) == (200, 0)

    run(test)


def test_cancelling_an_awaited_request_leaves_nothing_pending() -> None:
    async def test() -> None:
        async with create_async_bus() as bus:
            task = asyncio.get_running_loop().create_task(
                bus.request(Message(channel_id="nobody"), timeout=WAIT)
            )
            while bus.get_metrics()["requests_pending"] < 1:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            metrics = bus.get_metrics()
        assert (metrics["requests"], metrics["request_failures"], metrics["requests_pending"]) == (1, 1, 0)

    run(test)


def test_a_request_cancelled_while_it_is_sent_is_ended_once_sent() -> None:
    async def test() -> None:
        async with create_async_bus({"bus": {"workers": 1}, "gateway": {"message_queue_size": 1}}) as bus:
            gate = threading.Event()
            bus.register_inbound_handler("busy", lambda _m: gate.wait(WAIT))
            await bus.send_inbound(Message(channel_id="busy"))  # the worker waits on the gate
            await bus.send_inbound(Message(channel_id="busy"))  # the queue is full
            task = asyncio.get_running_loop().create_task(
                bus.request(Message(channel_id="busy"), timeout=WAIT)
            )
            await asyncio.sleep(0.1)  # its send waits for room
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gate.set()  # the send goes through; the request is ended then
            assert await bus.wait_idle(WAIT)
            for _ in range(100):
                if bus.get_metrics()["requests_pending"] == 0:
                    break
                await asyncio.sleep(0.01)
            metrics = bus.get_metrics()
        assert (metrics["request_failures"], metrics["requests_pending"]) == (1, 0)

    run(test)


def test_an_awaited_request_times_out_and_stop_wakes_the_others() -> None:
    async def test() -> None:
        bus = create_async_bus()
        await bus.start()
        with pytest.raises(RequestTimeoutError):
            await bus.request(Message(channel_id="nobody"), timeout=0.2)
        waiting = [
            asyncio.ensure_future(bus.request(Message(channel_id="nobody"), timeout=WAIT)) for _ in range(3)
        ]
        while bus.get_metrics()["requests_pending"] < 3:
            await asyncio.sleep(0.01)
        assert await bus.stop()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, BusClosedError) for o in outcomes), outcomes
        with pytest.raises(BusClosedError):
            await bus.send_inbound(Message(channel_id="nobody"))
        with pytest.raises(BusClosedError):
            await bus.request(Message(channel_id="nobody"))
        metrics = bus.get_metrics()
        assert (metrics["request_timeouts"], metrics["request_failures"], metrics["requests_pending"]) == (
            1,
            3,
            0,
        )

    run(test)


def test_the_loop_is_not_held_while_sends_wait_on_a_full_queue() -> None:
    async def test() -> None:
        config = {"bus": {"workers": 1, "send_timeout": 0.5}, "gateway": {"message_queue_size": 1}}
        async with create_async_bus(config) as bus:
            gate = threading.Event()
            bus.register_inbound_handler("busy", lambda _m: gate.wait(WAIT))
            async with Ticker() as ticker:
                outcomes = await asyncio.gather(
                    *(bus.send_inbound(Message(channel_id="busy", content=str(n))) for n in range(6)),
                    return_exceptions=True,
                )
            gate.set()
        refused = [o for o in outcomes if isinstance(o, BusFullError)]
        assert refused, "the queue never filled: the test proves nothing"
        assert ticker.worst < 0.05, f"the loop was held {ticker.worst * 1000:.0f} ms"

    run(test)


def test_the_loop_is_not_held_while_redis_is_unreachable(redis_server: RedisServer) -> None:
    async def test() -> None:
        async with AsyncBus(_redis_bus(redis_server, send_timeout=1.0)) as bus:
            redis_server.stop()
            async with Ticker() as ticker:
                outcomes = await asyncio.gather(
                    *(bus.send_inbound(Message(channel_id="telegram")) for _ in range(4)),
                    asyncio.sleep(0.5),
                    return_exceptions=True,
                )
            await bus.stop(timeout=5, drain=False)
        assert all(isinstance(o, BusConnectionError) for o in outcomes[:4]), outcomes
        assert ticker.worst < 0.05, f"the loop was held {ticker.worst * 1000:.0f} ms"

    run(test)


def _redis_bus(server: RedisServer, **bus: Any) -> Bus:
    return create_bus(redis_config(server, **bus))


def test_a_coroutine_handler_that_raises_is_counted_and_the_others_run() -> None:
    async def test() -> None:
        ran: list[str] = []
        async with create_async_bus() as bus:

            async def fails(_message: Message) -> None:
                raise ValueError("boom")

            async def works(message: Message) -> None:
                ran.append(message.content)

            bus.register_inbound_handler("telegram", fails)
            bus.register_inbound_handler("telegram", works)
            bus.register_inbound_handler("telegram", lambda m: ran.append("plain " + m.content))
            await bus.send_inbound(Message(channel_id="telegram", content="x"))
            assert await bus.wait_idle(WAIT)
            metrics = bus.get_metrics()
        assert ran == ["x", "plain x"]
        assert (metrics["errors"], metrics["handled_in"]) == (1, 1)

    run(test)


def test_a_coroutine_handler_registered_outside_a_loop_is_refused() -> None:
    bus = create_async_bus()

    async def handle(_message: Message) -> None:
        pass

    with pytest.raises(RuntimeError, match="from a coroutine"):
        bus.register_inbound_handler("telegram", handle)
    asyncio.run(bus.stop())


def test_a_coroutine_handler_that_raises_a_timeout_is_counted_and_frees_its_worker() -> None:
    async def test() -> None:
        async with create_async_bus({"bus": {"workers": 1}}) as bus:

            async def asks_in_vain(message: Message) -> None:
                await bus.request(Message(channel_id="nobody", content=message.content), timeout=0.05)

            async def times_out(_message: Message) -> None:
                raise asyncio.TimeoutError

            bus.register_inbound_handler("asking", asks_in_vain)
            bus.register_inbound_handler("timing-out", times_out)
            await bus.send_inbound(Message(channel_id="asking", session_id="s"))
            await bus.send_inbound(Message(channel_id="timing-out", session_id="s"))
            assert await bus.wait_idle(WAIT), "a worker is stuck on a handler that raised a timeout"
            metrics = bus.get_metrics()
        assert (metrics["errors"], metrics["handled_in"], metrics["request_timeouts"]) == (2, 2, 1)

    run(test)


def test_an_object_with_an_async_call_is_awaited() -> None:
    class Collector:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def __call__(self, message: Message) -> None:
            await asyncio.sleep(0)
            self.seen.append(message.content)

    async def test() -> None:
        collector = Collector()
        async with create_async_bus() as bus:
            bus.register_inbound_handler("telegram", collector)
            await bus.send_inbound(Message(channel_id="telegram", content="x"))
            assert await bus.wait_idle(WAIT)
        assert collector.seen == ["x"]

    run(test)
