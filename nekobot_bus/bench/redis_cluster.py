"""RedisBus on a Redis Cluster beside RedisBus on one Redis, in the same run.

Two figures: the latency of one message through the bus (sharded pub/sub:
``SPUBLISH`` to the channel's primary, read by the reader thread of that
primary), message by message alternating with one Redis; and the rate of
``send_many`` batches spread over many channels, which lands on every
primary, against the same batches on one Redis.

What it cannot show on a small machine: a cluster scales by putting its
primaries on machines of their own. Here three primaries, their replicas,
the client and its reader threads share the same cores, so the cluster's
rate can only be the price of routing (a pipeline per primary, a reader per
primary), never the gain of more machines.
"""

from __future__ import annotations

import statistics
import threading

from ..backends.redis import RedisBus
from ..backends.redis.options import Address
from ..backends.redis.topology import Server, Standalone
from ..dispatch import Direction
from ..message import Message
from ._measure import STALL_SECONDS, Load, now, why_lost
from ._options import BenchOptions
from ._progress import Progress
from ._stats import Result

__all__ = ["run_redis_cluster", "steps_redis_cluster"]

_PREFIX = "nekobot-bench:"
#: Channels the batches spread over: enough that every primary serves several.
CHANNELS = 64
_BATCH = 200


def cluster_server(nodes: str) -> Server:
    """The cluster ``--redis-cluster-nodes`` names: ``host:port,host:port,...``.

    :raises ConfigError: naming what is not a ``host:port``, as for ``bus.redis_cluster_nodes``.
    """
    return Address(redis_cluster_nodes=[n.strip() for n in nodes.split(",")]).server()


def paired_latency(one: Server, cluster: Server, count: int) -> tuple[list[float], list[float]]:
    """Send-to-handler latency through one Redis and through the cluster, alternating, in us."""
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    out: dict[str, list[float]] = {"one": [], "cluster": []}
    buses = {
        "one": RedisBus(one, prefix=_PREFIX, workers=1),
        "cluster": RedisBus(cluster, prefix=_PREFIX, workers=1),
    }
    for name, bus in buses.items():

        def handler(_message: Message, into: list[float] = out[name]) -> None:
            into.append(now() - sent_at[0])
            ack.release()

        bus.register_inbound_handler("bench", handler)
    with buses["one"], buses["cluster"]:
        for _ in range(count):
            for bus in buses.values():
                sent_at[0] = now()
                bus.send_inbound(Message(channel_id="bench", content="x"))
                if not ack.acquire(timeout=5):
                    raise RuntimeError(f"{bus!r} did not deliver within 5 s")
    return [v * 1e6 for v in out["one"]], [v * 1e6 for v in out["cluster"]]


def spread_rate(server: Server, count: int) -> Load:
    """Messages per second end to end, ``send_many`` batches over :data:`CHANNELS` channels."""
    done = threading.Semaphore(0)
    bus = RedisBus(server, prefix=_PREFIX + "spread:", workers=2, queue_size=max(100, count))
    for n in range(CHANNELS):  # each by name: "*" on a cluster would add its copies (every.py)
        bus.register_inbound_handler(f"c{n}", lambda _m: done.release())
    batch = [Message(channel_id=f"c{n % CHANNELS}", content="x") for n in range(count)]
    with bus:
        started = now()
        for i in range(0, count, _BATCH):
            bus.send_many(Direction.INBOUND, batch[i : i + _BATCH])
        handled, last_at = 0, now()
        while handled < count and done.acquire(timeout=STALL_SECONDS):
            handled += 1
            last_at = now()
    lost = count - handled
    return Load(handled / (last_at - started) if handled else 0.0, [], lost, why_lost(bus.get_metrics()))


def steps_redis_cluster(options: BenchOptions) -> int:
    return options.rounds if "redis-cluster" in options.backends else 0


def run_redis_cluster(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure the cluster at ``options.redis_cluster_nodes`` beside the Redis at ``options.redis_url``."""
    one: Server = Standalone(options.redis_url)
    cluster: Server = cluster_server(options.redis_cluster_nodes)
    count = min(options.count, 2000)
    per_round = max(100, count // options.rounds)
    ones: list[float] = []
    clusters: list[float] = []
    p50s: list[tuple[float, float]] = []
    rates: list[tuple[float, float]] = []
    notes: list[str] = []
    for _ in range(options.rounds):
        a, b = paired_latency(one, cluster, per_round)
        ones += a
        clusters += b
        p50s.append((statistics.median(a), statistics.median(b)))
        runs = [spread_rate(server, count) for server in (one, cluster)]
        rates.append((runs[0].rate, runs[1].rate))
        notes += [f"lost {r.lost} of {count}: {r.why}" for r in runs if r.lost]
        progress.step("redis cluster")
    rate_one = statistics.median(r for r, _ in rates)
    rate_cluster = statistics.median(r for _, r in rates)
    note = f"rate: send_many in batches of {_BATCH} over {CHANNELS} channels"
    results = [
        Result("RedisBus on one Redis (beside the cluster)", ones, rate_one, note=note),
        Result(
            "RedisBus on a Redis Cluster, sharded pub/sub",
            clusters,
            rate_cluster,
            note="; ".join(notes) or note,
        ),
    ]
    ratios: dict[str, float] = {
        "cluster_p50_vs_redis": statistics.median(c for _, c in p50s) / statistics.median(o for o, _ in p50s),
    }
    if rate_one:
        ratios["cluster_rate_vs_redis"] = rate_cluster / rate_one
    return results, ratios
