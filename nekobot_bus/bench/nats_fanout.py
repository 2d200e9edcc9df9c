"""NatsBus fan-out against bare nats-py publish/subscribe, in the same run.

The baseline is what a synchronous program does with bare nats-py: an event
loop on a thread of its own, a subscription whose callback notes the time,
and a publish handed to the loop from the sending thread. NatsBus adds a
round trip per send (it returns once the server has the message) and the
hand-off to a worker thread. Both run at once on one server and the sender
alternates between them message by message, as for Redis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import statistics
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client

from .. import codec
from .._urls import redact
from ..backends.nats import NatsBus
from ..backends.nats.loop import LoopThread
from ..message import Message
from ._measure import Alternation, producer_rates
from ._options import BenchOptions
from ._progress import Progress
from ._stats import REDIS_CLAIM, Result

__all__ = ["nats_problem", "run_nats", "steps_nats"]

_PREFIX = "nekobot-bench"


def nats_problem(url: str) -> str | None:
    """Why the NATS at *url* cannot be measured, or ``None`` when it greets a client within 2 s.

    A plain socket that reads the server's ``INFO`` greeting: it needs no
    credentials and says nothing through nats-py's logger.
    """
    parts = urlsplit(url)
    shown = redact(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 4222), timeout=2) as sock:
            sock.settimeout(2)
            if sock.recv(4) == b"INFO":
                return None
            return f"{shown} answers, but not as a NATS server does"
    except (OSError, ValueError) as exc:
        return f"NATS at {shown} does not answer ({exc}); start one with 'nats-server &'"


def paired_latency(url: str, count: int, payload_size: int = 1) -> tuple[list[float], list[float]]:
    """Send-to-handler latency of bare nats-py and of NatsBus, message by message, in us."""
    loop = LoopThread("bench-nats-bare")
    loop.start()
    pair = Alternation()
    subject = f"{_PREFIX}.bare"

    async def received(_msg: object) -> None:
        pair.bare_received()

    async def connect() -> Client:
        client = await nats.connect(url)
        await client.subscribe(subject, cb=received)
        await client.flush()
        return client

    client = loop.call(connect(), 10.0)
    payload = codec.encode(Message(channel_id="bench", content="x" * payload_size))

    def publish() -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(client.publish(subject, payload), loop.loop)  # type: ignore[arg-type]

    try:
        return pair.run(
            NatsBus(url, subject_prefix=_PREFIX, workers=1),
            publish,
            count,
            payload_size,
            bare_done=lambda done: done.result(5),  # the publish coroutine has finished
        )
    finally:
        loop.call(client.close(), 5.0)
        loop.stop(5.0)


def steps_nats(options: BenchOptions) -> int:
    """How many progress steps :func:`run_nats` takes."""
    return options.rounds + 1 if "nats" in options.backends else 0


def run_nats(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the NATS fan-out against ``options.nats_url``, which the caller found reachable."""
    url, size = options.nats_url, options.payload_size
    count = min(options.count, 2000)
    per_round = max(100, count // options.rounds)
    bare: list[float] = []
    ours: list[float] = []
    p50_bare, p50_ours = [], []
    for _ in range(options.rounds):
        b, o = paired_latency(url, per_round, size)
        bare += b
        ours += o
        p50_bare.append(statistics.median(b))
        p50_ours.append(statistics.median(o))
        progress.step("nats fan-out")
    one, many, lost = producer_rates(
        lambda workers: NatsBus(url, subject_prefix=f"{_PREFIX}.load", workers=workers, queue_size=1000),
        count,
        options,
    )
    progress.step("nats fan-out, producers")
    results = [
        Result("nats-py publish/subscribe (baseline)", bare, note="raw baseline, publish from a thread"),
        Result("NatsBus fan-out", ours, one, many, None, REDIS_CLAIM, note=lost),
    ]
    ratios = {"nats_p50_vs_bare": statistics.median(p50_ours) / statistics.median(p50_bare)}
    return results, ratios
