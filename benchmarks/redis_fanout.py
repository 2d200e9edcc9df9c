"""RedisBus fan-out against bare redis-py publish/subscribe, in the same run.

Latency is one message at a time, send to handler, as in :mod:`benchmarks.local`;
the baseline is a bare ``PUBLISH`` read by a bare redis-py subscriber thread
on the same server. Both run at once and the sender alternates between them
message by message: measured one after the other, the ratio moved between
1.3 and 1.6 from run to run with the machine's load alone. Throughput is one producer sending batches with
:meth:`RedisBus.send_many`, measured until the last message was handled.
"""

from __future__ import annotations

import statistics
import threading

import redis

from nekobot_bus import Direction, Message
from nekobot_bus.backends.redis import RedisBus

from ._measure import messages, now
from ._stats import Result

__all__ = ["run_redis"]

_PREFIX = "nekobot-bench:"


def paired_latency(url: str, count: int) -> tuple[list[float], list[float]]:
    """Send-to-handler latency of bare redis-py and of RedisBus, message by message, in us.

    Both receivers run at once and the sender alternates between them, so
    whatever the shared machine does at any moment hits both alike.
    """
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{_PREFIX}bare")
    bus = RedisBus(url, prefix=_PREFIX, workers=1)
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    bare: list[float] = []
    ours: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if pubsub.get_message(timeout=0.5) is not None:
                bare.append(now() - sent_at[0])
                ack.release()

    def handler(_message: Message) -> None:
        ours.append(now() - sent_at[0])
        ack.release()

    bus.register_inbound_handler("bench", handler)
    reader = threading.Thread(target=read, name="bench-bare-subscriber")
    reader.start()
    payload = b'{"channel_id":"bench","content":"x"}'
    try:
        with bus:
            for message in messages(count):
                sent_at[0] = now()
                client.publish(f"{_PREFIX}bare", payload)
                if not ack.acquire(timeout=5):
                    raise RuntimeError("the bare subscriber did not receive within 5 s")
                sent_at[0] = now()
                bus.send_inbound(message)
                if not ack.acquire(timeout=5):
                    raise RuntimeError(f"{bus!r} did not deliver within 5 s")
    finally:
        done.set()
        reader.join()
        pubsub.close()
        client.close()
    return [v * 1e6 for v in bare], [v * 1e6 for v in ours]


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
        b, o = paired_latency(url, per_round)
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
