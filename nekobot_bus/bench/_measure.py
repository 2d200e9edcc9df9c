"""The measuring loops every backend shares: one at a time, under load, and peak memory."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

from ..bus import Bus
from ..message import Message
from ._options import BenchOptions

__all__ = ["bus_latency", "bus_load", "messages", "now", "peak_mib", "producer_rates"]

now = time.perf_counter
T = TypeVar("T")


def messages(count: int, payload_size: int = 1, sessions: int = 64) -> list[Message]:
    """*count* messages on channel ``bench`` with *payload_size* characters of content."""
    content = "x" * payload_size
    return [Message(channel_id="bench", session_id=f"s{n % sessions}", content=content) for n in range(count)]


def bus_latency(bus: Bus, count: int, payload_size: int = 1) -> list[float]:
    """Send-to-handler latency through *bus* (not yet started), one message at a time, in us.

    The sender takes a timestamp, sends, and waits for the handler's
    acknowledgement before the next message, so no message waits behind another.
    """
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    out: list[float] = []

    def handler(message: Message) -> None:
        out.append(now() - sent_at[0])
        ack.release()

    bus.register_inbound_handler("bench", handler)
    with bus:
        for message in messages(count, payload_size):
            sent_at[0] = now()
            bus.send_inbound(message)
            if not ack.acquire(timeout=5):
                raise RuntimeError(f"{bus!r} did not deliver a message within 5 s")
    return [v * 1e6 for v in out]


def bus_load(
    sender: Bus,
    receiver: Bus,
    count: int,
    *,
    producers: int = 1,
    payload_size: int = 1,
    handler_seconds: float = 0.0,
    sessions: int = 64,
) -> tuple[float, list[float]]:
    """Move *count* messages, built beforehand, as fast as *producers* threads can send them.

    *receiver* (which may be *sender*) gets a handler, is started, and
    stopped at the end. Each message's send time is noted by its id, so the
    latencies include the time spent queued behind others.

    :param handler_seconds: how long each handler call blocks, as on I/O.
    :returns: messages per second until the last was handled, and the
        latencies in us.
    """
    done = threading.Semaphore(0)
    latencies: list[float] = []
    sent_at: dict[str, float] = {}

    def handler(message: Message) -> None:
        if handler_seconds:
            time.sleep(handler_seconds)
        latencies.append(now() - sent_at[message.id])
        done.release()

    receiver.register_inbound_handler("bench", handler)
    content = "x" * payload_size
    batches = [
        [
            Message(channel_id="bench", session_id=f"p{p}s{n % sessions}", content=content)
            for n in range(count // producers + (1 if p < count % producers else 0))
        ]
        for p in range(producers)
    ]
    errors: list[BaseException] = []

    def produce(batch: list[Message]) -> None:
        send = sender.send_inbound
        try:
            for message in batch:
                sent_at[message.id] = now()
                send(message)
        except Exception as exc:  # raised again in the measuring thread below
            errors.append(exc)

    with receiver:
        if sender is not receiver:
            sender.start()
        threads = [
            threading.Thread(target=produce, args=(batch,), name=f"bench-producer-{p}")
            for p, batch in enumerate(batches)
        ]
        started = now()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for _ in range(count):
            if not done.acquire(timeout=60):
                raise RuntimeError(f"{receiver!r} stalled: not every message was handled within 60 s")
        elapsed = now() - started
        if sender is not receiver:
            sender.stop()
    return count / elapsed, [v * 1e6 for v in latencies]


def producer_rates(make_bus: Callable[[int], Bus], count: int, options: BenchOptions) -> tuple[float, float]:
    """Rates with one producer and with ``options.producers``, from a sender to a receiver on its own.

    :param make_bus: builds a bus with the given number of workers (the
        sender gets one, the receiver ``options.workers``).
    """
    one, _ = bus_load(make_bus(1), make_bus(options.workers), count, payload_size=options.payload_size)
    many, _ = bus_load(
        make_bus(1),
        make_bus(options.workers),
        count,
        producers=options.producers,
        payload_size=options.payload_size,
    )
    return one, many


def peak_mib(run: Callable[[], T]) -> float:
    """The peak of Python allocations, in MiB, while *run* runs (tracemalloc; slows it down)."""
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024)
