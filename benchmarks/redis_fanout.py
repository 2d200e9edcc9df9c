"""RedisBus fan-out against bare redis-py publish/subscribe, in the same run.

Latency is one message at a time, send to handler, as in :mod:`benchmarks.local`;
the baseline is a bare ``PUBLISH`` read by a bare redis-py subscriber thread
on the same server. Throughput is one producer sending batches with
:meth:`RedisBus.send_many`, measured until the last message was handled.
"""

from __future__ import annotations

import statistics
import threading

import redis

from nekobot_bus import Direction
from nekobot_bus.backends.redis import RedisBus

from ._measure import bus_latency, messages, now
from ._stats import Result

__all__ = ["run_redis"]

_PREFIX = "nekobot-bench:"


def bare_latency(url: str, count: int) -> list[float]:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{_PREFIX}bare")
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    out: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if pubsub.get_message(timeout=0.5) is not None:
                out.append(now() - sent_at[0])
                ack.release()

    reader = threading.Thread(target=read, name="bench-bare-subscriber")
    reader.start()
    payload = b'{"channel_id":"bench","content":"x"}'
    try:
        for _ in range(count):
            sent_at[0] = now()
            client.publish(f"{_PREFIX}bare", payload)
            ack.acquire(timeout=5)
    finally:
        done.set()
        reader.join()
        pubsub.close()
        client.close()
    return [v * 1e6 for v in out]


def batch_throughput(url: str, count: int, batch: int = 500) -> float:
    batches = messages(count)
    bus = RedisBus(url, prefix=_PREFIX, workers=2, queue_size=max(100, count))
    bus.register_inbound_handler("bench", lambda m: None)
    with bus:
        started = now()
        for i in range(0, count, batch):
            bus.send_many(Direction.INBOUND, batches[i : i + batch])
        bus.wait_idle(60)
        elapsed = now() - started
        handled = bus.get_metrics()["handled_in"]
    return handled / elapsed


def run_redis(url: str, count: int = 2000, rounds: int = 3) -> tuple[list[Result], dict[str, float]]:
    """Measure; raise redis.ConnectionError if *url* is not reachable."""
    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    bare: list[float] = []
    ours: list[float] = []
    p50_bare, p50_ours, rates = [], [], []
    per_round = max(100, count // rounds)
    for _ in range(rounds):
        b = bare_latency(url, per_round)
        o = bus_latency(RedisBus(url, prefix=_PREFIX, workers=1), per_round)
        bare += b
        ours += o
        p50_bare.append(statistics.median(b))
        p50_ours.append(statistics.median(o))
        rates.append(batch_throughput(url, 20_000))
    results = [
        Result("redis-py publish/subscribe (baseline)", bare, None, "raw baseline"),
        Result("RedisBus fan-out", ours, statistics.median(rates), "rate: send_many, 1 producer"),
    ]
    ratios = {
        "redis_p50_vs_bare": statistics.median(p50_ours) / statistics.median(p50_bare),
        "redis_batched_rate": statistics.median(rates),
    }
    return results, ratios
