"""The queue delivery (Redis Streams) against the fan-out delivery, in the same run.

Latency is one message at a time, send to handler, as for the fan-out; the
acknowledgement happens after the handler and is not part of it. Throughput
is one producer sending batches with :meth:`RedisStreamBus.send_many` to two
consumers of one group, measured until every message was handled.
"""

from __future__ import annotations

import statistics
import threading
import uuid

import redis

from nekobot_bus import Direction, Message
from nekobot_bus.backends.redis import RedisBus
from nekobot_bus.backends.redis_streams import RedisStreamBus

from ._measure import bus_latency, messages, now
from ._stats import Result

__all__ = ["run_redis_queue"]


def _cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def queue_throughput(url: str, count: int, consumers: int = 2, batch: int = 500) -> float:
    """Messages per second from one producer through *consumers* buses of one group."""
    prefix = f"nekobot-bench-queue:{uuid.uuid4().hex[:8]}:"
    handled = threading.Semaphore(0)
    buses = [
        RedisStreamBus(url, prefix=prefix, group="bench", workers=2, queue_size=1000)
        for _ in range(consumers)
    ]
    producer = RedisStreamBus(url, prefix=prefix, group="bench-producer")

    def handler(_message: Message) -> None:
        handled.release()

    try:
        for bus in buses:
            bus.register_inbound_handler("bench", handler)
            bus.start()
        batches = messages(count)
        started = now()
        for i in range(0, count, batch):
            producer.send_many(Direction.INBOUND, batches[i : i + batch])
        for _ in range(count):
            if not handled.acquire(timeout=30):
                raise RuntimeError("the queue consumers stalled")
        elapsed = now() - started
    finally:
        for bus in buses:
            bus.stop(timeout=10)
        producer.stop(timeout=10)
        _cleanup(url, prefix)
    return count / elapsed


def run_redis_queue(url: str, count: int = 2000, rounds: int = 3) -> tuple[list[Result], dict[str, float]]:
    """Measure; raise redis.ConnectionError if *url* is not reachable."""
    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    fanout: list[float] = []
    queued: list[float] = []
    p50_fanout, p50_queue, rates = [], [], []
    per_round = max(100, count // rounds)
    for _ in range(rounds):
        prefix = f"nekobot-bench-queue:{uuid.uuid4().hex[:8]}:"
        f = bus_latency(RedisBus(url, prefix=prefix, workers=1), per_round)
        q = bus_latency(RedisStreamBus(url, prefix=prefix, workers=1), per_round)
        _cleanup(url, prefix)
        fanout += f
        queued += q
        p50_fanout.append(statistics.median(f))
        p50_queue.append(statistics.median(q))
        rates.append(queue_throughput(url, 20_000))
    results = [
        Result("RedisStreamBus queue", queued, statistics.median(rates), "rate: 1 producer, 2 consumers"),
    ]
    ratios = {
        "queue_p50_vs_fanout": statistics.median(p50_queue) / statistics.median(p50_fanout),
        "queue_rate": statistics.median(rates),
    }
    return results, ratios
