"""The local bus against a bare ``queue.Queue``, measured in the same run.

Latency is one message at a time: the sender takes a timestamp, sends, and
waits for the handler's acknowledgement before the next message, so no
message waits behind another. The handler takes the second timestamp. The
baseline does the same with a bare ``queue.Queue`` and a consumer thread.

Throughput is one producer and one worker moving *count* messages as fast
as they can, both sides through a queue bounded like the bus's.

Rounds alternate baseline and bus so that drift on a shared machine hits
both alike; each figure is the median over rounds.
"""

from __future__ import annotations

import queue
import statistics
import threading
from collections.abc import Callable

from nekobot_bus import LocalBus, Message

from ._measure import bus_latency, messages, now
from ._stats import Result

__all__ = ["run_local"]


def queue_latency(count: int) -> list[float]:
    """Send-to-consumer latency of a bare queue.Queue between two threads, in us."""
    q: queue.Queue[object] = queue.Queue(100)
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    out: list[float] = []

    def consume() -> None:
        while True:
            item = q.get()
            out.append(now() - sent_at[0])
            ack.release()
            if item is None:
                return

    consumer = threading.Thread(target=consume, name="bench-queue-consumer")
    consumer.start()
    for item in [*messages(count - 1), None]:
        sent_at[0] = now()
        q.put(item)
        ack.acquire()
    consumer.join()
    return [v * 1e6 for v in out]


def queue_throughput(count: int) -> float:
    """Messages per second through a bare bounded queue.Queue, one producer, one consumer."""
    q: queue.Queue[object] = queue.Queue(100)
    items = [*messages(count), None]

    def consume() -> None:
        while q.get() is not None:
            pass

    consumer = threading.Thread(target=consume, name="bench-queue-consumer")
    started = now()
    consumer.start()
    for item in items:
        q.put(item)
    consumer.join()
    return count / (now() - started)


def bus_throughput(count: int) -> float:
    """Messages per second through LocalBus, one producer, one worker."""
    batch = messages(count)
    bus = LocalBus(workers=1)
    bus.register_inbound_handler("bench", lambda m: None)
    with bus:
        started = now()
        for message in batch:
            bus.send_inbound(message)
        bus.wait_idle(60)
        elapsed = now() - started
    return count / elapsed


def inline_overhead(count: int) -> tuple[float, float]:
    """Per-message time of a direct handler call and of an inline send, in us."""
    batch = messages(count)
    sink: list[Message] = []
    handler: Callable[[Message], None] = sink.append
    started = now()
    for message in batch:
        handler(message)
    direct = (now() - started) / count
    sink.clear()
    bus = LocalBus(dispatch="inline")
    bus.register_inbound_handler("bench", handler)
    with bus:
        send = bus.send_inbound
        started = now()
        for message in batch:
            send(message)
        inline = (now() - started) / count
    return direct * 1e6, inline * 1e6


def run_local(count: int = 5000, rounds: int = 5) -> tuple[list[Result], dict[str, float]]:
    """Measure everything above; return the result lines and the target ratios."""
    lat_q: list[float] = []
    lat_bus: list[float] = []
    lat_inline: list[float] = []
    p50s_q, p50s_bus, tput_q, tput_bus, direct, inline = [], [], [], [], [], []
    per_round = max(100, count // rounds)
    for _ in range(rounds):
        q = queue_latency(per_round)
        b = bus_latency(LocalBus(workers=1), per_round)
        lat_q += q
        lat_bus += b
        p50s_q.append(statistics.median(q))
        p50s_bus.append(statistics.median(b))
        lat_inline += bus_latency(LocalBus(dispatch="inline"), per_round)
        tput_q.append(queue_throughput(count))
        tput_bus.append(bus_throughput(count))
        d, i = inline_overhead(count)
        direct.append(d)
        inline.append(i)
    results = [
        Result("queue.Queue hand-off (baseline)", lat_q, statistics.median(tput_q), "raw baseline"),
        Result("LocalBus threaded", lat_bus, statistics.median(tput_bus)),
        Result("LocalBus inline", lat_inline, 1e6 / statistics.median(inline)),
        Result("direct handler call (baseline)", [], 1e6 / statistics.median(direct), "raw baseline"),
    ]
    ratios = {
        "threaded_p50_vs_queue": statistics.median(p50s_bus) / statistics.median(p50s_q),
        "threaded_throughput_vs_queue": statistics.median(tput_bus) / statistics.median(tput_q),
        "inline_overhead_us": statistics.median(inline) - statistics.median(direct),
    }
    return results, ratios
