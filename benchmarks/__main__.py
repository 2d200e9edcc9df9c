"""``python -m benchmarks``: measure, print a table and the targets' verdicts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import redis

from ._stats import render_table
from .local import run_local
from .redis_fanout import run_redis
from .redis_queue import run_redis_queue

# (ratio key, description, target, "max" or "min")
TARGETS = [
    ("threaded_p50_vs_queue", "threaded p50 latency / queue.Queue p50", 1.5, "max"),
    ("threaded_throughput_vs_queue", "threaded throughput / queue.Queue throughput", 0.5, "min"),
    ("inline_overhead_us", "inline send - direct call, us per message", 2.0, "max"),
    ("redis_p50_vs_bare", "Redis fan-out p50 / bare redis-py pub/sub p50", 1.5, "max"),
    ("redis_batched_rate", "Redis batched sends, messages/s end to end", 30_000, "min"),
    ("queue_p50_vs_fanout", "Redis queue p50 / Redis fan-out p50", 3.0, "max"),
    ("queue_rate", "Redis queue, 1 producer 2 consumers, messages/s", 10_000, "min"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the local bus against a bare queue.Queue and a direct call, in one run.",
    )
    parser.add_argument("--count", type=int, default=5000, help="messages per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; figures are medians")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="the Redis to measure against (default: %(default)s); 'none' skips Redis",
    )
    args = parser.parse_args(argv)

    results, ratios = run_local(args.count, args.rounds)
    if args.redis_url != "none":
        try:
            redis_results, redis_ratios = run_redis(args.redis_url, min(args.count, 2000))
            queue_results, queue_ratios = run_redis_queue(args.redis_url, min(args.count, 2000))
            redis_results += queue_results
            redis_ratios.update(queue_ratios)
        except redis.ConnectionError as exc:
            print(
                f"Redis at {args.redis_url} is not reachable ({exc}); Redis lines left out. "
                "Start one with: redis-server --port 6379 --save '' --daemonize yes",
                file=sys.stderr,
            )
        else:
            results += redis_results
            ratios.update(redis_ratios)
    verdicts = []
    for key, text, target, kind in TARGETS:
        if key not in ratios:
            continue
        value = ratios[key]
        ok = value <= target if kind == "max" else value >= target
        bound = f"<= {target}" if kind == "max" else f">= {target}"
        verdicts.append(
            {"target": text, "measured": round(value, 3), "goal": bound, "verdict": "met" if ok else "MISSED"}
        )
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    if args.json:
        json.dump(
            {"machine": machine, "results": [r.summary() for r in results], "targets": verdicts},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(f"nekobot_bus benchmarks on {machine}; latency in us, rate in messages/s\n")
        columns = ["name", "p50_us", "p90_us", "p99_us", "p99.9_us", "max_us", "rate_per_s", "note"]
        print(render_table([r.summary() for r in results], columns))
        print()
        print(render_table(verdicts, ["target", "measured", "goal", "verdict"]))
    missed = any(v["verdict"] != "met" for v in verdicts)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
