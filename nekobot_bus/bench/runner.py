"""The benchmark run: options from the command line, measuring, and the report."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._urls import redact
from ..cli._status import EXIT_CONNECTION, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..errors import BusConnectionError, ConfigError, NekobotBusError

if TYPE_CHECKING:
    from ..backends.redis.topology import Server
from ._options import BenchOptions, options_from
from ._progress import Progress
from ._stats import Result
from .local import run_local, steps_local
from .report import machine, plot, render, verdicts

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Measure what *args* asks for, print the report; return the exit status."""
    options = options_from(args)
    servers = _servers(args, options)
    if isinstance(servers, int):
        return servers
    results, ratios, scaling = _measure(options, servers, progress=not args.no_progress)
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
                "nats_url": redact(options.nats_url),
                "mqtt_url": redact(options.mqtt_url),
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


#: The backends each server carries, and how the report names it.
_NEEDS = {
    "redis": frozenset({"redis", "redis-queue", "redis-cluster"}),
    "redis-cluster": frozenset({"redis-cluster"}),
    "nats": frozenset({"nats", "nats-queue"}),
    "mqtt": frozenset({"mqtt", "mqtt-queue"}),
}
_NAMES = {"redis": "Redis", "redis-cluster": "Redis Cluster", "nats": "NATS", "mqtt": "MQTT"}


def _servers(args: argparse.Namespace, options: BenchOptions) -> frozenset[str] | int:
    """The servers (``redis``, ``nats``) whose lines can run; an exit status when nothing asked for can."""
    checks = {
        "redis": lambda: _redis_problem(options.redis_url),
        "redis-cluster": lambda: _cluster_problem(options.redis_cluster_nodes),
        "nats": lambda: _nats_problem(options.nats_url),
        "mqtt": lambda: _mqtt_problem(options.mqtt_url),
    }
    available: set[str] = set()
    left_out: set[str] = set()
    status = EXIT_OK
    for server, backends in _NEEDS.items():
        if not options.backends & backends:
            continue
        problem = checks[server]()
        if problem is None:
            available.add(server)
            continue
        print(f"error: {problem[0]}; the {_NAMES[server]} lines are left out.", file=sys.stderr)
        left_out |= backends
        status = problem[1]
    asked_only_servers = bool(args.backend) and "all" not in args.backend
    if left_out and asked_only_servers and not options.backends - left_out:
        return status
    return frozenset(available)


def _measure(
    options: BenchOptions, servers: frozenset[str], *, progress: bool
) -> tuple[list[Result], dict[str, float], list[dict[str, object]]]:
    """Every line *options* asks for whose server answers; imported only when asked for."""
    from .scaling import run_scaling, steps_scaling  # noqa: PLC0415

    lanes: list[tuple[int, Callable[[BenchOptions, Progress], tuple[list[Result], dict[str, float]]]]] = [
        (steps_local(options), run_local)
    ]
    if "redis" in servers:
        from .redis_fanout import run_redis, steps_redis  # noqa: PLC0415 - the redis extra
        from .redis_queue import run_redis_queue, steps_redis_queue  # noqa: PLC0415

        if "redis" in options.backends:
            lanes.append((steps_redis(options), run_redis))
        if "redis-queue" in options.backends:
            lanes.append((steps_redis_queue(options), run_redis_queue))
    if {"redis", "redis-cluster"} <= servers and "redis-cluster" in options.backends:
        from .redis_cluster import run_redis_cluster, steps_redis_cluster  # noqa: PLC0415

        lanes.append((steps_redis_cluster(options), run_redis_cluster))
    if "nats" in servers:
        from .nats_fanout import run_nats, steps_nats  # noqa: PLC0415 - the nats extra
        from .nats_queue import run_nats_queue, steps_nats_queue  # noqa: PLC0415

        if "nats" in options.backends:
            lanes.append((steps_nats(options), run_nats))
        if "nats-queue" in options.backends:
            lanes.append((steps_nats_queue(options), run_nats_queue))
    if "mqtt" in servers:
        from .mqtt import run_mqtt, steps_mqtt  # noqa: PLC0415 - the mqtt extra

        lanes.append((steps_mqtt(options), run_mqtt))
    redis_ok = "redis" in servers
    if options.backends & {"local", "redis"}:
        from .requests import run_requests, steps_requests  # noqa: PLC0415

        lanes.append((steps_requests(options, redis_ok), functools.partial(run_requests, redis_ok=redis_ok)))
    results: list[Result] = []
    ratios: dict[str, float] = {}
    scaling: list[dict[str, object]] = []
    total = sum(steps for steps, _ in lanes) + steps_scaling(options, redis_ok)
    with Progress(total, enabled=progress) as bar:
        for _, lane in lanes:
            measured, found = lane(options, bar)
            results += measured
            ratios |= found
        if options.scaling:
            scaling = run_scaling(options, bar, redis_ok)
    if "queue_rate" in ratios and ratios.get("redis_batched_rate"):
        ratios["queue_rate_vs_fanout"] = ratios["queue_rate"] / ratios["redis_batched_rate"]
    return results, ratios, scaling


def _cluster_problem(nodes: str) -> tuple[str, int] | None:
    """Why the Redis Cluster lines cannot run; ``None`` when they can."""
    try:
        from .redis_cluster import cluster_server  # noqa: PLC0415 - needs the redis extra
    except ImportError:
        return "the Redis Cluster lines need the redis extra: pip install 'nekobot_bus[redis]'", EXIT_USAGE
    try:
        server = cluster_server(nodes)
    except ConfigError as exc:
        return f"--redis-cluster-nodes: {exc}", EXIT_USAGE
    return _redis_problem(server)


def _redis_problem(url: str | Server) -> tuple[str, int] | None:
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


def _nats_problem(url: str) -> tuple[str, int] | None:
    """Why the NATS lines cannot run, and the exit status that says so; ``None`` when they can."""
    try:
        from .nats_fanout import nats_problem  # noqa: PLC0415 - needs the nats extra
    except ImportError:
        return "the NATS lines need the nats extra: pip install 'nekobot_bus[nats]'", EXIT_USAGE
    problem = nats_problem(url)
    return None if problem is None else (problem, EXIT_CONNECTION)


def _mqtt_problem(url: str) -> tuple[str, int] | None:
    """Why the MQTT lines cannot run, and the exit status that says so; ``None`` when they can."""
    try:
        from .mqtt import mqtt_problem  # noqa: PLC0415 - needs the mqtt extra
    except ImportError:
        return "the MQTT lines need the mqtt extra: pip install 'nekobot_bus[mqtt]'", EXIT_USAGE
    problem = mqtt_problem(url)
    return None if problem is None else (problem, EXIT_CONNECTION)
