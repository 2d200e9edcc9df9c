"""The benchmark run: options from the command line, measuring, and the report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from ._options import BACKENDS, BenchOptions
from ._progress import Progress
from ._stats import Result
from .local import run_local, steps_local
from .redis_fanout import run_redis, steps_redis
from .redis_queue import run_redis_queue, steps_redis_queue
from .report import machine, plot, render, verdicts
from .scaling import run_scaling, steps_scaling

__all__ = ["EXIT_MISSED", "EXIT_REDIS_UNREACHABLE", "add_arguments", "options_from", "run"]

#: ``--check`` and a target was missed.
EXIT_MISSED = 1
#: A Redis backend was asked for by name and the server did not answer.
EXIT_REDIS_UNREACHABLE = 3

DESCRIPTION = """\
Measure nekobot_bus against the raw baselines (a bare queue.Queue hand-off,
bare redis-py publish/subscribe) and the libraries people use instead
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
2 bad arguments, 3 a Redis backend was asked for and Redis did not answer.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to *parser* (``nekobot-bus bench`` and ``python -m benchmarks``)."""
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
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
    backends = frozenset(BACKENDS) if "all" in chosen else frozenset(chosen)
    return BenchOptions(
        backends=backends,
        count=args.count,
        payload_size=args.payload_size,
        producers=args.producers,
        workers=args.workers,
        rounds=args.rounds,
        redis_url=args.redis_url,
        scaling=args.scaling,
    )


def run(args: argparse.Namespace) -> int:
    """Measure what *args* asks for, print the report; return the exit status."""
    options = options_from(args)
    wants_redis = bool(options.backends & {"redis", "redis-queue"})
    redis_ok = wants_redis and _reachable(options.redis_url)
    if wants_redis and not redis_ok:
        print(
            f"error: Redis at {options.redis_url} does not answer, so the Redis lines are left out. "
            "Start one with 'redis-server --port 6379 --save \"\" --daemonize yes', "
            "or point --redis-url at yours.",
            file=sys.stderr,
        )
        if args.backend and "all" not in args.backend and not options.backends & {"local", "local-inline"}:
            return EXIT_REDIS_UNREACHABLE
    total = steps_local(options) + steps_scaling(options, redis_ok)
    if redis_ok:
        total += steps_redis(options) + steps_redis_queue(options)
    results: list[Result] = []
    ratios: dict[str, float] = {}
    scaling: list[dict[str, object]] = []
    with Progress(total, enabled=not args.no_progress) as progress:
        measured, found = run_local(options, progress)
        results += measured
        ratios |= found
        if redis_ok and "redis" in options.backends:
            measured, found = run_redis(options, progress)
            results += measured
            ratios |= found
        if redis_ok and "redis-queue" in options.backends:
            measured, found = run_redis_queue(options, progress)
            results += measured
            ratios |= found
        if options.scaling:
            scaling = run_scaling(options, progress, redis_ok)
    targets = verdicts(ratios)
    if args.plot:
        try:
            plot(args.plot, results, scaling)
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'nekobot_bus[bench]'", file=sys.stderr)
            return 2
    if args.json:
        document: dict[str, Any] = {
            "machine": machine(),
            "options": {**vars(options), "backends": sorted(options.backends)},
            "results": [r.summary() for r in results],
            "targets": targets,
            "scaling": scaling,
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print(render(results, targets, scaling, options.producers))
    missed = any(t["verdict"] != "met" for t in targets)
    return EXIT_MISSED if missed and args.check else 0


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False
    return True
