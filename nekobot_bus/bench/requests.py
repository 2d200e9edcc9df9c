"""Ask and wait: ``bus.request`` against the same round trip built by hand, and asyncio against threads.

A round trip is one request sent inbound, an agent's handler on the same bus
answering outbound, and the reply back in the asking thread. By hand, as a
user would build it without ``request``: an outbound handler that looks the
reply's ``reply_to`` up in a dict of :class:`threading.Event`. Each message
alternates between the two, on one running bus, so whatever the machine
does hits both alike. The asyncio line is :class:`~nekobot_bus.aio.AsyncBus`'s
awaited ``request`` on a local bus, alternating with the threaded one in
blocks of 50 (one event loop cannot alternate with a blocking call message
by message without measuring the switch).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections.abc import Callable

from ..aio import AsyncBus
from ..backends.local import LocalBus
from ..bus import Bus
from ..message import Message
from ._measure import now
from ._options import BenchOptions
from ._progress import Progress
from ._stats import Result

__all__ = ["run_requests", "steps_requests"]

_BLOCK = 50
_WAIT = 5.0


def _answering(bus: Bus) -> Bus:
    """*bus* with an agent that answers every message of ``bench-hand`` and ``bench-ask``."""
    for channel in ("bench-hand", "bench-ask"):
        bus.register_inbound_handler(channel, lambda m: bus.send_outbound(m.reply("ok")))
    return bus


def round_trips(bus: Bus, count: int) -> tuple[list[float], list[float]]:
    """Round trips by hand and by ``bus.request`` on *bus* (started here), alternating, in us."""
    waiting: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def by_hand(reply: Message) -> None:
        with lock:
            event = waiting.pop(reply.reply_to, None)
        if event is not None:
            event.set()

    _answering(bus).register_outbound_handler("bench-hand", by_hand)
    hand: list[float] = []
    asked: list[float] = []
    with bus:
        for n in range(count):
            question = Message(channel_id="bench-hand", session_id=f"s{n % 8}")
            event = threading.Event()
            with lock:
                waiting[question.id] = event
            started = now()
            bus.send_inbound(question)
            if not event.wait(_WAIT):
                raise RuntimeError(f"{bus!r} did not answer within {_WAIT} s")
            hand.append(now() - started)
            question = Message(channel_id="bench-ask", session_id=f"s{n % 8}")
            started = now()
            bus.request(question, timeout=_WAIT)
            asked.append(now() - started)
    return [v * 1e6 for v in hand], [v * 1e6 for v in asked]


def threaded_and_awaited(count: int) -> tuple[list[float], list[float]]:
    """``request`` round trips on a local bus, threaded and awaited, in blocks, in us."""
    threaded: list[float] = []
    awaited: list[float] = []

    async def measure() -> None:
        async with AsyncBus(_answering(LocalBus())) as bus:
            for _ in range(max(1, count // _BLOCK)):
                for _ in range(_BLOCK):
                    started = now()
                    await bus.request(Message(channel_id="bench-ask"), timeout=_WAIT)
                    awaited.append(now() - started)
                await asyncio.to_thread(_block, bus.bus, threaded)

    asyncio.run(measure())
    return [v * 1e6 for v in threaded], [v * 1e6 for v in awaited]


def _block(bus: Bus, out: list[float]) -> None:
    for _ in range(_BLOCK):
        started = now()
        bus.request(Message(channel_id="bench-ask"), timeout=_WAIT)
        out.append(now() - started)


def steps_requests(options: BenchOptions, redis_ok: bool) -> int:
    """How many progress steps :func:`run_requests` takes."""
    return options.rounds * (
        2 * int("local" in options.backends) + int(redis_ok and "redis" in options.backends)
    )


def run_requests(
    options: BenchOptions, progress: Progress, redis_ok: bool
) -> tuple[list[Result], dict[str, float]]:
    """Measure the request lines of the backends *options* asks for; result lines and target ratios."""
    per_round = max(100, min(options.count, 2000) // options.rounds)
    lanes: list[tuple[str, str, Callable[[], Bus]]] = []
    if "local" in options.backends:
        lanes.append(("LocalBus", "local", LocalBus))
    if redis_ok and "redis" in options.backends:
        from ..backends.redis import RedisBus  # noqa: PLC0415 - the redis extra

        lanes.append(("RedisBus", "redis", lambda: RedisBus(options.redis_url)))
    results: list[Result] = []
    ratios: dict[str, float] = {}
    for name, key, make in lanes:
        hand, asked, hand_p50s, asked_p50s = [], [], [], []
        for _ in range(options.rounds):
            h, a = round_trips(make(), per_round)
            hand += h
            asked += a
            hand_p50s.append(statistics.median(h))
            asked_p50s.append(statistics.median(a))
            progress.step(f"{name} requests")
        results += [
            Result(f"{name} round trip by hand (baseline)", hand, note="outbound handler + Event"),
            Result(f"{name} request", asked, note="send inbound, await the reply"),
        ]
        ratios[f"{key}_request_vs_by_hand"] = statistics.median(asked_p50s) / statistics.median(hand_p50s)
    if "local" in options.backends:
        threaded, awaited, threaded_p50s, awaited_p50s = [], [], [], []
        for _ in range(options.rounds):
            t, a = threaded_and_awaited(per_round)
            threaded += t
            awaited += a
            threaded_p50s.append(statistics.median(t))
            awaited_p50s.append(statistics.median(a))
            progress.step("AsyncBus requests")
        ratio = statistics.median(awaited_p50s) / statistics.median(threaded_p50s)
        note = f"awaited; p50 {ratio:.1f}x the threaded request's, alternating in blocks"
        results.append(Result("AsyncBus request (local)", awaited, note=note))
    return results, ratios
