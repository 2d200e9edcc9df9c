"""The local bus against a bare ``queue.Queue``, a direct call and blinker, in the same run.

Latency is one message at a time: the sender takes a timestamp, sends, and
waits for the handler's acknowledgement before the next message, so no
message waits behind another. The handler takes the second timestamp. The
baseline does the same with a bare ``queue.Queue`` and a consumer thread.

Throughput is producers moving ``count`` messages as fast as they can, both
sides through a queue bounded like the bus's. Rounds alternate baseline and
bus so that drift on a shared machine hits both alike; each ratio is taken
from the medians over rounds.
"""

from __future__ import annotations

import queue
import statistics
import threading
from collections.abc import Callable

from ..backends.local import LocalBus
from ..message import Message
from ._measure import bus_latency, bus_load, messages, now, peak_mib
from ._options import BenchOptions
from ._progress import Progress
from ._stats import LOCAL_CLAIM, Result
from .alternatives import blinker_inline

__all__ = ["run_local", "steps_local"]


def queue_latency(count: int, payload_size: int) -> list[float]:
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
    for item in [*messages(count - 1, payload_size), None]:
        sent_at[0] = now()
        q.put(item)
        ack.acquire()
    consumer.join()
    return [v * 1e6 for v in out]


def queue_throughput(count: int, payload_size: int) -> float:
    """Messages per second through a bare bounded queue.Queue, one producer, one consumer."""
    q: queue.Queue[object] = queue.Queue(100)
    items = [*messages(count, payload_size), None]

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


def bus_throughput(count: int, payload_size: int) -> float:
    """Messages per second through LocalBus, one producer, one worker, as the bare queue."""
    batch = messages(count, payload_size)
    bus = LocalBus(workers=1)
    bus.register_inbound_handler("bench", lambda m: None)
    with bus:
        started = now()
        for message in batch:
            bus.send_inbound(message)
        bus.wait_idle(60)
        elapsed = now() - started
    return count / elapsed


def inline_overhead(count: int, payload_size: int) -> tuple[float, float]:
    """Per-message time of a direct handler call and of an inline send, in us."""
    batch = messages(count, payload_size)
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


def steps_local(options: BenchOptions) -> int:
    """How many progress steps :func:`run_local` takes."""
    per_round = int("local" in options.backends) + int("local-inline" in options.backends)
    return options.rounds * per_round + len(options.backends & {"local", "local-inline"})


def run_local(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the local backends *options* asks for; return result lines and target ratios."""
    count, size, rounds = options.count, options.payload_size, options.rounds
    per_round = max(100, count // rounds)
    results: list[Result] = []
    ratios: dict[str, float] = {}
    if "local" in options.backends:
        lat_q: list[float] = []
        lat_bus: list[float] = []
        p50s_q, p50s_bus, tput_q, tput_bus = [], [], [], []
        for _ in range(rounds):
            q = queue_latency(per_round, size)
            b = bus_latency(LocalBus(workers=1), per_round, size)
            lat_q += q
            lat_bus += b
            p50s_q.append(statistics.median(q))
            p50s_bus.append(statistics.median(b))
            tput_q.append(queue_throughput(count, size))
            tput_bus.append(bus_throughput(count, size))
            progress.step("local bus")
        bus = LocalBus(workers=options.workers)
        many = bus_load(bus, bus, count, producers=options.producers, payload_size=size).rate
        peak = peak_mib(lambda: bus_throughput(count, size))
        progress.step("local bus, producers")
        results += [
            Result("queue.Queue hand-off (baseline)", lat_q, statistics.median(tput_q), note="raw baseline"),
            Result("LocalBus threaded", lat_bus, statistics.median(tput_bus), many, peak, LOCAL_CLAIM),
        ]
        ratios["threaded_p50_vs_queue"] = statistics.median(p50s_bus) / statistics.median(p50s_q)
        ratios["threaded_throughput_vs_queue"] = statistics.median(tput_bus) / statistics.median(tput_q)
    if "local-inline" in options.backends:
        lat_inline: list[float] = []
        direct, inline, blinker_sends = [], [], []
        for _ in range(rounds):
            lat_inline += bus_latency(LocalBus(dispatch="inline"), per_round, size)
            d, i = inline_overhead(count, size)
            direct.append(d)
            inline.append(i)
            measured = blinker_inline(count, size)
            if measured is not None:
                blinker_sends.append(1e6 / measured[1])
            progress.step("inline bus")
        bus = LocalBus(dispatch="inline")
        many = bus_load(bus, bus, count, producers=options.producers, payload_size=size).rate
        peak = peak_mib(lambda: inline_overhead(count, size))
        blinker = blinker_inline(count, size)
        progress.step("inline bus, producers")
        results += [
            Result("LocalBus inline", lat_inline, 1e6 / statistics.median(inline), many, peak, LOCAL_CLAIM),
            Result(
                "direct handler call (baseline)", rate=1e6 / statistics.median(direct), note="raw baseline"
            ),
        ]
        if blinker is not None:
            results.append(
                Result("blinker signal.send (alternative)", blinker[0], blinker[1], note="in-process")
            )
        if blinker_sends:
            ratios["inline_vs_blinker"] = statistics.median(inline) / statistics.median(blinker_sends)
    return results, ratios
