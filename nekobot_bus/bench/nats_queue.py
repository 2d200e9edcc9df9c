"""The queue delivery on JetStream against the NATS fan-out, in the same run, as for Redis.

Latency is one message at a time, send to handler: a JetStream send returns
once the stream stored the message, and the acknowledgement happens after
the handler, outside the measure. Throughput is one producer sending
batches with ``send_many`` to two consumers of one group, measured until
every message was handled. Every stream the run made is deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import uuid

import nats

from ..backends.nats import NatsBus, NatsQueueBus
from ._measure import Load, batch_size, bus_latency, group_throughput, loss_note, volume
from ._options import BenchOptions
from ._progress import Progress
from ._stats import REDIS_CLAIM, Result

__all__ = ["run_nats_queue", "steps_nats_queue"]


def _new_prefix() -> str:
    return f"nekobot-bench-queue.{uuid.uuid4().hex[:8]}"


def _cleanup(url: str, prefix: str) -> None:
    """Delete the streams a run made under *prefix*."""
    base = prefix.replace(".", "_")

    async def run() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            for name in (f"{base}_inbound", f"{base}_outbound", f"{base}_dead"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
        finally:
            await client.close()

    asyncio.run(run())


def queue_throughput(url: str, count: int, payload_size: int, consumers: int = 2) -> Load:
    """Messages per second from one producer through *consumers* buses of one group."""
    prefix = _new_prefix()
    try:
        return group_throughput(
            [
                NatsQueueBus(url, subject_prefix=prefix, group="bench", workers=2, queue_size=1000)
                for _ in range(consumers)
            ],
            NatsQueueBus(url, subject_prefix=prefix, group="bench-producer"),
            count,
            payload_size,
        )
    finally:
        _cleanup(url, prefix)


def steps_nats_queue(options: BenchOptions) -> int:
    """How many progress steps :func:`run_nats_queue` takes."""
    return options.rounds if "nats-queue" in options.backends else 0


def run_nats_queue(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the JetStream queue on ``options.nats_url``, which the caller found reachable."""
    url, size = options.nats_url, options.payload_size
    per_round = max(100, min(options.count, 2000) // options.rounds)
    queued: list[float] = []
    p50_fanout, p50_queue, rates = [], [], []
    lost_batches = ""
    for _ in range(options.rounds):
        prefix = _new_prefix()
        try:
            f = bus_latency(NatsBus(url, subject_prefix=prefix, workers=1), per_round, size)
            q = bus_latency(NatsQueueBus(url, subject_prefix=prefix, workers=1), per_round, size)
        finally:
            _cleanup(url, prefix)
        queued += q
        p50_fanout.append(statistics.median(f))
        p50_queue.append(statistics.median(q))
        run = queue_throughput(url, volume(size), size)
        rates.append(run.rate)
        lost_batches = lost_batches or loss_note(run.lost, volume(size), run.why)
        progress.step("nats queue")
    results = [
        Result("NatsQueueBus JetStream queue", queued, claim=REDIS_CLAIM),
        Result(
            "NatsQueueBus queue, send_many",
            rate=statistics.median(rates),
            note=lost_batches or f"{volume(size)} messages in batches of {batch_size(size)}, 2 consumers",
        ),
    ]
    ratios = {
        "nats_queue_p50_vs_fanout": statistics.median(p50_queue) / statistics.median(p50_fanout),
        "nats_queue_rate": statistics.median(rates),
    }
    return results, ratios
