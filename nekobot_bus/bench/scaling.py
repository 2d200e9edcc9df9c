"""How the bus scales: with producers sending at once, and with workers when handlers block.

Producers: 1, 2, 4 and 8 threads send as fast as they can through a bus
with ``--workers`` workers; throughput and the latency each message saw,
queueing included. Workers: 1, 4 and 16 workers whose handlers block for
1 ms each, as on I/O, with the load spread over 256 sessions: session
affinity lets N workers come close to N times the throughput of one.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from ..backends.local import LocalBus
from ..bus import Bus
from ._measure import bus_load
from ._options import BenchOptions
from ._progress import Progress
from ._stats import percentile

__all__ = ["HANDLER_SECONDS", "PRODUCERS", "WORKERS", "run_scaling", "steps_scaling"]

PRODUCERS = (1, 2, 4, 8)
WORKERS = (1, 4, 16)
HANDLER_SECONDS = 0.001


def steps_scaling(options: BenchOptions, redis_ok: bool) -> int:
    """How many progress steps :func:`run_scaling` takes."""
    if not options.scaling:
        return 0
    return len(PRODUCERS) * (1 + int(redis_ok and "redis" in options.backends)) + len(WORKERS)


def run_scaling(options: BenchOptions, progress: Progress, redis_ok: bool) -> list[dict[str, object]]:
    """Measure; one row per configuration, ready for the table and the plot."""
    rows: list[dict[str, object]] = []
    factories: list[tuple[str, Callable[[int], Bus]]] = [
        ("local", lambda w: LocalBus(workers=w, queue_size=1000))
    ]
    if redis_ok and "redis" in options.backends:
        from ..backends.redis import RedisBus  # noqa: PLC0415 - the redis extra

        url = options.redis_url
        factories.append(
            ("redis", lambda w: RedisBus(url, prefix="nekobot-bench-scaling:", workers=w, queue_size=1000))
        )
    count = min(options.count, 4000)
    for backend, make in factories:
        for producers in PRODUCERS:
            bus = make(options.workers)
            rate, latencies, _, _ = bus_load(
                bus, bus, count, producers=producers, payload_size=options.payload_size
            )
            rows.append(
                _row("producers", backend, producers, options.workers, rate=rate, latencies=latencies)
            )
            progress.step(f"scaling {backend}, {producers} producers")
    for workers in WORKERS:
        bus = LocalBus(workers=workers, queue_size=1000)
        rate, latencies, _, _ = bus_load(
            bus, bus, 1000, producers=1, handler_seconds=HANDLER_SECONDS, sessions=256
        )
        rows.append(_row("workers", "local", 1, workers, rate=rate, latencies=latencies))
        progress.step(f"scaling {workers} workers")
    base = next((r["rate_per_s"] for r in rows if r["series"] == "workers" and r["workers"] == 1), None)
    for row in rows:
        if row["series"] == "workers" and isinstance(base, float) and isinstance(row["rate_per_s"], float):
            row["speedup"] = row["rate_per_s"] / base
    return rows


def _row(
    series: str, backend: str, producers: int, workers: int, *, rate: float, latencies: list[float]
) -> dict[str, object]:
    values = sorted(latencies)
    return {
        "series": series,
        "backend": backend,
        "producers": producers,
        "workers": workers,
        "rate_per_s": rate,
        "p50_us": statistics.median(values),
        "p99_us": percentile(values, 99),
    }
