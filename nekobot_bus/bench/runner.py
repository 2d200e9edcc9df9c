"""The benchmark run: options from the command line, measuring, and the report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._urls import redact
from ..cli._status import EXIT_CONNECTION, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..errors import BusConnectionError, NekobotBusError
from ._options import options_from
from ._progress import Progress
from ._stats import Result
from .local import run_local, steps_local
from .report import machine, plot, render, verdicts

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Measure what *args* asks for, print the report; return the exit status."""
    options = options_from(args)
    wants_redis = bool(options.backends & {"redis", "redis-queue"})
    problem = _redis_problem(options.redis_url) if wants_redis else None
    redis_ok = wants_redis and problem is None
    # Imported here: the local lines need neither redis-py nor a server.
    from .scaling import run_scaling, steps_scaling  # noqa: PLC0415

    if redis_ok:
        from .redis_fanout import run_redis, steps_redis  # noqa: PLC0415
        from .redis_queue import run_redis_queue, steps_redis_queue  # noqa: PLC0415
    if problem is not None:
        print(f"error: {problem[0]}; the Redis lines are left out.", file=sys.stderr)
        if args.backend and "all" not in args.backend and not options.backends & {"local", "local-inline"}:
            return problem[1]
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
    if "queue_rate" in ratios and "redis_batched_rate" in ratios:
        ratios["queue_rate_vs_fanout"] = ratios["queue_rate"] / ratios["redis_batched_rate"]
    targets = verdicts(ratios)
    if args.plot:
        try:
            plot(args.plot, results, scaling)
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'nekobot_bus[bench]'", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        document: dict[str, Any] = {
            "machine": machine(),
            "options": {
                **vars(options),
                "backends": sorted(options.backends),
                "redis_url": redact(options.redis_url),
            },
            "results": [r.summary() for r in results],
            "targets": targets,
            "scaling": scaling,
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print(render(results, targets, scaling, options.producers))
    missed = any(t["verdict"] != "met" for t in targets)
    return EXIT_FAILED if missed and args.check else EXIT_OK


def _redis_problem(url: str) -> tuple[str, int] | None:
    """Why the Redis lines cannot run, and the exit status that says so; ``None`` when they can."""
    try:
        from ..backends.redis.client import check_reachable  # noqa: PLC0415 - needs the redis extra
    except ImportError:
        return "the Redis lines need the redis extra: pip install 'nekobot_bus[redis]'", EXIT_USAGE
    try:
        check_reachable(url)
    except BusConnectionError as exc:
        return str(exc), EXIT_CONNECTION
    except NekobotBusError as exc:
        return str(exc), EXIT_USAGE
    return None
