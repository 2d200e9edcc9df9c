"""The queue delivery (Redis Streams) against the fan-out delivery, in the same run.

Latency is one message at a time, send to handler, as for the fan-out; the
acknowledgement happens after the handler and is not part of it. Throughput
is one producer sending batches with :meth:`RedisStreamBus.send_many` to two
consumers of one group, measured until every message was handled.
"""

from __future__ import annotations

import statistics
import uuid

import redis

from ..backends.redis import RedisBus, RedisStreamBus
from ._measure import (
    Load,
    batch_size,
    bus_latency,
    group_throughput,
    loss_note,
    peak_mib,
    producer_rates,
    volume,
)
from ._options import BenchOptions
from ._progress import Progress
from ._stats import REDIS_CLAIM, Result

__all__ = ["run_redis_queue", "steps_redis_queue"]


def _cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def queue_throughput(url: str, count: int, payload_size: int, consumers: int = 2) -> Load:
    """Messages per second from one producer through *consumers* buses of one group."""
    prefix = f"nekobot-bench-queue:{uuid.uuid4().hex[:8]}:"
    try:
        return group_throughput(
            [
                RedisStreamBus(url, prefix=prefix, group="bench", workers=2, queue_size=1000)
                for _ in range(consumers)
            ],
            RedisStreamBus(url, prefix=prefix, group="bench-producer"),
            count,
            payload_size,
        )
    finally:
        _cleanup(url, prefix)


def steps_redis_queue(options: BenchOptions) -> int:
    """How many progress steps :func:`run_redis_queue` takes."""
    return options.rounds + 1 if "redis-queue" in options.backends else 0


def run_redis_queue(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the queue delivery on ``options.redis_url``, which the caller found reachable."""
    url, size = options.redis_url, options.payload_size
    count = min(options.count, 2000)
    queued: list[float] = []
    p50_fanout, p50_queue, rates = [], [], []
    lost_batches = ""
    per_round = max(100, count // options.rounds)
    for _ in range(options.rounds):
        prefix = f"nekobot-bench-queue:{uuid.uuid4().hex[:8]}:"
        f = bus_latency(RedisBus(url, prefix=prefix, workers=1), per_round, size)
        q = bus_latency(RedisStreamBus(url, prefix=prefix, workers=1), per_round, size)
        _cleanup(url, prefix)
        queued += q
        p50_fanout.append(statistics.median(f))
        p50_queue.append(statistics.median(q))
        run = queue_throughput(url, volume(size), size)
        rates.append(run.rate)
        lost_batches = lost_batches or loss_note(run.lost, volume(size), run.why)
        progress.step("redis queue")
    prefix = f"nekobot-bench-queue:{uuid.uuid4().hex[:8]}:"
    try:
        one, many, lost = producer_rates(
            lambda workers: RedisStreamBus(url, prefix=prefix, workers=workers, queue_size=1000),
            count,
            options,
        )
        peak = peak_mib(lambda: queue_throughput(url, count, size))
    finally:
        _cleanup(url, prefix)
    progress.step("redis queue, producers")
    results = [
        Result("RedisStreamBus queue", queued, one, many, peak, REDIS_CLAIM, note=lost),
        Result(
            "RedisStreamBus queue, send_many",
            rate=statistics.median(rates),
            note=lost_batches or f"{volume(size)} messages in batches of {batch_size(size)}, 2 consumers",
        ),
    ]
    ratios = {
        "queue_p50_vs_fanout": statistics.median(p50_queue) / statistics.median(p50_fanout),
        "queue_rate": statistics.median(rates),
    }
    return results, ratios
