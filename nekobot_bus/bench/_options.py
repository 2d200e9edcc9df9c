"""What a benchmark run measures, as the command line asks for it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

__all__ = ["BACKENDS", "DESCRIPTION", "EPILOG", "ON_REQUEST", "BenchOptions", "add_arguments", "options_from"]

#: The backends ``--backend all`` (the default) measures.
BACKENDS = ("local", "local-inline", "redis", "redis-queue", "nats", "nats-queue", "mqtt", "mqtt-queue")
#: Those measured only when asked for by name: they need servers a machine rarely has.
ON_REQUEST = ("redis-cluster",)


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run.

    :param count: messages per throughput run; latency rounds take ``count / rounds`` each.
    :param payload_size: characters of content per message.
    :param producers: threads sending at once for the several-producers rate.
    :param workers: worker threads per direction of the bus under several producers.
    """

    backends: frozenset[str] = field(default_factory=lambda: frozenset(BACKENDS))
    count: int = 5000
    payload_size: int = 1
    producers: int = 4
    workers: int = 4
    rounds: int = 5
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    redis_cluster_nodes: str = "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
    scaling: bool = False


DESCRIPTION = """\
Measure nekobot_bus against the raw baselines (a bare queue.Queue hand-off,
bare redis-py publish/subscribe, bare nats-py) and the libraries people use instead
(blinker, kombu's Redis transport; bench extra), in one run, and set each
result beside the Go design's claim: about 1 us in process, 1-5 ms over a
local Redis. Absolute times drift on shared machines; the ratios between
lines measured in the same run are the point.
"""

EPILOG = """\
examples:
  nekobot-bus bench --backend local            the in-process bus only, no Redis needed
  nekobot-bus bench --json > bench.json        every figure, for machines
  nekobot-bus bench --scaling --plot out.png   add the scaling tables, and draw them

exit status: 0 measured (1 with --check when a target was missed),
2 bad arguments, 3 a Redis or NATS backend was asked for and its server did not answer.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to *parser* (``nekobot-bus bench``)."""
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, *ON_REQUEST, "all"],
        action="append",
        help="what to measure; repeat for several (default: all)",
    )
    parser.add_argument(
        "--count", type=_positive, default=5000, help="messages per run (default: %(default)s)"
    )
    parser.add_argument(
        "--payload-size", type=_positive, default=1, help="characters of content (default: 1)"
    )
    parser.add_argument("--producers", type=_positive, default=4, help="threads for the rate_many column (4)")
    parser.add_argument(
        "--workers", type=_positive, default=4, help="bus workers under several producers (4)"
    )
    parser.add_argument(
        "--rounds", type=_positive, default=5, help="alternating rounds; figures are medians (5)"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="the Redis to measure against (default: %(default)s)",
    )
    parser.add_argument(
        "--nats-url",
        default="nats://127.0.0.1:4222",
        help="the NATS to measure against (default: %(default)s)",
    )
    parser.add_argument(
        "--mqtt-url",
        default="mqtt://127.0.0.1:1883",
        help="the MQTT broker to measure against (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-cluster-nodes",
        default="127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
        help="--backend redis-cluster: some nodes of the cluster, host:port,... (default: %(default)s); "
        "measured beside the Redis at --redis-url",
    )
    parser.add_argument(
        "--scaling", action="store_true", help="also 1-8 producers and 1/4/16 blocking workers"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--plot", metavar="FILE.png", help="draw latency CDFs (and scaling) with matplotlib")
    parser.add_argument("--check", action="store_true", help="exit 1 when a speed target is missed")
    parser.add_argument("--no-progress", action="store_true", help="never show the progress bar")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def options_from(args: argparse.Namespace) -> BenchOptions:
    chosen = set(args.backend or ["all"])
    backends = frozenset(BACKENDS) | (frozenset(chosen) - {"all"}) if "all" in chosen else frozenset(chosen)
    return BenchOptions(
        backends=backends,
        count=args.count,
        payload_size=args.payload_size,
        producers=args.producers,
        workers=args.workers,
        rounds=args.rounds,
        redis_url=args.redis_url,
        nats_url=args.nats_url,
        mqtt_url=args.mqtt_url,
        redis_cluster_nodes=args.redis_cluster_nodes,
        scaling=args.scaling,
    )
