"""RedisBus fan-out against bare redis-py publish/subscribe and kombu, in the same run.

Latency is one message at a time, send to handler, as in
:mod:`nekobot_bus.bench.local`. The baseline is a bare ``PUBLISH`` of the
same JSON, read by a bare redis-py subscriber thread on the same server.
Both run at once and the sender alternates between them message by message:
measured one after the other, the ratio moved between 1.3 and 1.6 from run
to run with the machine's load alone. kombu's Redis transport, when
installed, is measured one message at a time in its own turn of each round.

Throughput is one producer sending batches with :meth:`RedisBus.send_many`,
and one or several producers sending one message at a time, each measured
until the last message was handled.
"""

from __future__ import annotations

import statistics
import threading

import redis

from .. import codec
from ..backends.redis import RedisBus
from ..dispatch import Direction
from ..message import Message
from ._measure import (
    STALL_SECONDS,
    Alternation,
    Load,
    batch_size,
    loss_note,
    messages,
    now,
    peak_mib,
    producer_rates,
    volume,
    why_lost,
)
from ._options import BenchOptions
from ._progress import Progress
from ._stats import REDIS_CLAIM, Result
from .alternatives import KombuLane

__all__ = ["run_redis", "steps_redis"]

_PREFIX = "nekobot-bench:"


def paired_latency(url: str, count: int, payload_size: int = 1) -> tuple[list[float], list[float]]:
    """Send-to-handler latency of bare redis-py and of RedisBus, message by message, in us.

    Both receivers run at once and the sender alternates between them, so
    whatever the shared machine does at any moment hits both alike.
    """
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{_PREFIX}bare")
    pair = Alternation()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if pubsub.get_message(timeout=0.5) is not None:
                pair.bare_received()

    reader = threading.Thread(target=read, name="bench-bare-subscriber")
    reader.start()
    payload = codec.encode(Message(channel_id="bench", content="x" * payload_size))
    try:
        return pair.run(
            RedisBus(url, prefix=_PREFIX, workers=1),
            lambda: client.publish(f"{_PREFIX}bare", payload),
            count,
            payload_size,
        )
    finally:
        done.set()
        reader.join()
        pubsub.close()
        client.close()


def batch_throughput(url: str, count: int, payload_size: int) -> Load:
    """Messages per second end to end from one producer sending batches with ``send_many``."""
    batches = messages(count, payload_size)
    batch = batch_size(payload_size)
    bus = RedisBus(url, prefix=_PREFIX, workers=2, queue_size=max(100, count))
    bus.register_inbound_handler("bench", lambda m: None)
    with bus:
        started = now()
        for i in range(0, count, batch):
            bus.send_many(Direction.INBOUND, batches[i : i + batch])
        handled, last_at = 0, now()
        while handled < count and now() - last_at < STALL_SECONDS:  # until done, or nothing moves
            idle = bus.wait_idle(0.2)
            metrics = bus.get_metrics()
            if metrics["handled_in"] > handled:
                handled, last_at = metrics["handled_in"], now()
            elif idle and metrics["reconnects"] and now() - last_at > 1.0:
                break  # Redis cut the subscriber and it has nothing left: the rest is gone
    lost = count - handled
    rate = handled / (last_at - started) if handled else 0.0
    return Load(rate, [], lost, why_lost(bus.get_metrics()) if lost else "")


def bare_batch_throughput(url: str, count: int, payload_size: int) -> Load:
    """The baseline of :func:`batch_throughput`: bare redis-py pipelined PUBLISH to a subscriber thread."""
    channel = _PREFIX + "bare-batch"
    payloads = [codec.encode(m) for m in messages(count, payload_size)]
    batch = batch_size(payload_size)
    publisher = redis.Redis.from_url(url)
    subscriber = redis.Redis.from_url(url).pubsub()
    subscriber.subscribe(channel)
    confirmed = None
    while confirmed is None:
        confirmed = subscriber.get_message(timeout=1.0)  # the subscribe confirmation
    received = [0]
    last_at = [now()]
    cut: list[str] = []
    done = threading.Event()

    def read() -> None:
        try:
            while received[0] < count and now() - last_at[0] < STALL_SECONDS:
                item = subscriber.get_message(timeout=1.0)
                if item is not None and item["type"] == "message":
                    received[0] += 1
                    last_at[0] = now()
        except redis.ConnectionError as exc:  # Redis cut a subscriber that fell behind
            cut.append(str(exc))
        done.set()

    reader = threading.Thread(target=read, name="bench-bare-subscriber")
    reader.start()
    started = now()
    for i in range(0, count, batch):
        pipe = publisher.pipeline(transaction=False)
        for body in payloads[i : i + batch]:
            pipe.publish(channel, body)
        pipe.execute()
    done.wait()
    reader.join()
    subscriber.close()
    publisher.close()
    lost = count - received[0]
    why = (
        f"Redis cut the subscriber ({cut[0]}): its client-output-buffer-limit for pubsub"
        if cut
        else "nothing arrived for 10 s"
    )
    rate = received[0] / (last_at[0] - started) if received[0] else 0.0
    return Load(rate, [], lost, why if lost else "")


def steps_redis(options: BenchOptions) -> int:
    """How many progress steps :func:`run_redis` takes."""
    return options.rounds + 1 if "redis" in options.backends else 0


def run_redis(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the fan-out against the Redis at ``options.redis_url``, which the caller found reachable."""
    url, size = options.redis_url, options.payload_size
    count = min(options.count, 2000)
    bare: list[float] = []
    ours: list[float] = []
    theirs: list[float] = []
    p50_bare, p50_ours, p50_theirs, rates, rates_bare = [], [], [], [], []
    lost_bare = lost_ours = ""  # the first round's loss, if any: what bounds large payloads
    per_round = max(100, count // options.rounds)
    kombu = KombuLane.open(url)
    try:
        for _ in range(options.rounds):
            b, o = paired_latency(url, per_round, size)
            # kombu's consumer keeps working after each message, which would
            # disturb the lines measured beside it: it gets its own turn.
            body = {"channel_id": "bench", "content": "x" * size}
            k = [kombu.once(body) for _ in range(per_round)] if kombu is not None else []
            bare += b
            ours += o
            theirs += k
            p50_bare.append(statistics.median(b))
            p50_ours.append(statistics.median(o))
            if k:
                p50_theirs.append(statistics.median(k))
            bare_run = bare_batch_throughput(url, volume(size), size)
            our_run = batch_throughput(url, volume(size), size)
            rates_bare.append(bare_run.rate)
            rates.append(our_run.rate)
            lost_bare = lost_bare or loss_note(bare_run.lost, volume(size), bare_run.why)
            lost_ours = lost_ours or loss_note(our_run.lost, volume(size), our_run.why)
            progress.step("redis fan-out")
    finally:
        if kombu is not None:
            kombu.close()
    one, many, lost_load = producer_rates(
        lambda workers: RedisBus(url, prefix=_PREFIX + "load:", workers=workers, queue_size=1000),
        count,
        options,
    )
    peak = peak_mib(lambda: batch_throughput(url, count, size))
    progress.step("redis fan-out, producers")
    results = [
        Result("redis-py publish/subscribe (baseline)", bare, note="raw baseline"),
        Result("RedisBus fan-out", ours, one, many, peak, REDIS_CLAIM, note=lost_load),
        Result(
            "redis-py pipelined publish/subscribe (baseline)",
            rate=statistics.median(rates_bare),
            note=lost_bare or f"{volume(size)} messages in batches of {batch_size(size)}",
        ),
        Result(
            "RedisBus fan-out, send_many",
            rate=statistics.median(rates),
            note=lost_ours or f"{volume(size)} messages in batches of {batch_size(size)}",
        ),
    ]
    ratios = {
        "redis_p50_vs_bare": statistics.median(p50_ours) / statistics.median(p50_bare),
        "redis_batched_rate": statistics.median(rates),
    }
    if statistics.median(rates_bare):  # a baseline that Redis cut before it received has no rate to compare
        ratios["redis_batched_vs_bare"] = statistics.median(rates) / statistics.median(rates_bare)
    if theirs:
        results.append(Result("kombu Redis transport (alternative)", theirs, note="SimpleQueue put/get"))
        ratios["kombu_p50_vs_redis"] = statistics.median(p50_theirs) / statistics.median(p50_ours)
    return results, ratios
