"""Turning measurements into the terminal table, the JSON document and the plot."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from ._stats import Result, render_table

__all__ = ["TARGETS", "machine", "plot", "render", "verdicts"]

#: (ratio key, description, goal, "max" or "min"): the speed targets the project holds itself to.
#: Every one is a ratio of two lines measured in the same run: absolute times
#: drift threefold between machines, ratios do not.
TARGETS = [
    ("inline_vs_blinker", "inline send / blinker signal.send, per message", 0.5, "max"),
    ("threaded_p50_vs_queue", "threaded p50 latency / queue.Queue p50", 1.5, "max"),
    ("threaded_throughput_vs_queue", "threaded throughput / queue.Queue throughput", 0.7, "min"),
    ("redis_p50_vs_bare", "Redis fan-out p50 / bare redis-py pub/sub p50", 1.25, "max"),
    ("redis_batched_vs_bare", "Redis send_many rate / bare redis-py pipelined rate", 0.5, "min"),
    ("kombu_p50_vs_redis", "kombu Redis transport p50 / Redis fan-out p50", 5.0, "min"),
    ("queue_p50_vs_fanout", "Redis queue p50 / Redis fan-out p50", 3.0, "max"),
    ("queue_rate_vs_fanout", "Redis queue send_many rate / fan-out send_many rate", 0.2, "min"),
    ("nats_p50_vs_bare", "NATS fan-out p50 / bare nats-py pub/sub p50", 1.5, "max"),
    ("nats_queue_p50_vs_fanout", "NATS JetStream queue p50 / NATS fan-out p50", 3.0, "max"),
    ("mqtt_p50_vs_bare", "MQTT fan-out p50 / bare paho-mqtt pub/sub p50", 1.5, "max"),
    ("mqtt_queue_p50_vs_fanout", "MQTT shared-subscription queue p50 / MQTT fan-out p50", 3.0, "max"),
    ("cluster_p50_vs_redis", "Redis Cluster fan-out p50 / one Redis fan-out p50", 1.5, "max"),
    ("cluster_rate_vs_redis", "Redis Cluster send_many rate / one Redis send_many rate", 0.5, "min"),
    ("local_request_vs_by_hand", "LocalBus request p50 / the round trip by hand p50", 1.2, "max"),
    ("redis_request_vs_by_hand", "RedisBus request p50 / the round trip by hand p50", 1.2, "max"),
]

RESULT_COLUMNS = [
    "name",
    "p50_us",
    "p90_us",
    "p99_us",
    "p99.9_us",
    "max_us",
    "rate_per_s",
    "rate_many_per_s",
    "peak_mib",
    "claim",
    "verdict",
    "note",
]


def machine() -> str:
    """The interpreter and machine, for the report's first line."""
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}"
    )


def verdicts(ratios: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per target that was measured: the figure, the goal and ``met`` or ``MISSED``."""
    rows = []
    for key, text, goal, kind in TARGETS:
        if key not in ratios:
            continue
        value = ratios[key]
        met = value <= goal if kind == "max" else value >= goal
        rows.append(
            {
                "target": text,
                "measured": round(value, 3),
                "goal": f"<= {goal:g}" if kind == "max" else f">= {goal:g}",
                "verdict": "met" if met else "MISSED",
            }
        )
    return rows


def render(
    results: Sequence[Result],
    targets: Sequence[Mapping[str, Any]],
    scaling: Sequence[Mapping[str, object]],
    producers: int,
) -> str:
    """The whole report as aligned text."""
    parts = [
        f"nekobot_bus benchmarks on {machine()}",
        f"latency in us, send to handler, one message at a time; rates in messages/s "
        f"(rate: 1 producer; rate_many: {producers} producers); peak_mib: Python allocations",
        "",
        render_table([r.summary() for r in results], RESULT_COLUMNS),
    ]
    if targets:
        parts += ["", render_table(targets, ["target", "measured", "goal", "verdict"])]
    if scaling:
        parts += [
            "",
            "scaling: latency includes queueing; workers rows have 1 ms blocking handlers over 256 sessions",
            render_table(
                scaling,
                ["series", "backend", "producers", "workers", "rate_per_s", "p50_us", "p99_us", "speedup"],
            ),
        ]
    return "\n".join(parts)


def plot(path: str, results: Sequence[Result], scaling: Sequence[Mapping[str, Any]]) -> None:
    """Write a PNG: the latency CDF of each line, and the scaling series when measured.

    :raises ImportError: matplotlib (the ``bench`` extra) is not installed.
    """
    import matplotlib  # noqa: PLC0415 - optional, from the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = 1 + (2 if scaling else 0)
    lines = [result for result in results if result.latencies_us]
    # The CDF's legend goes below it, two names a row: room for them under the panels.
    legend_rows = (len(lines) + 1) // 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8 + 0.18 * legend_rows), squeeze=False)
    cdf = axes[0][0]
    colors = plt.get_cmap("tab20")
    for n, result in enumerate(lines):
        values = sorted(result.latencies_us)
        # Twenty colours, and the kind of line in its style: a baseline dashed, a peer dotted.
        style = "--" if "(baseline)" in result.name else ":" if "(alternative)" in result.name else "-"
        cdf.plot(
            values,
            [(i + 1) / len(values) for i in range(len(values))],
            style,
            color=colors(n % 20),
            label=result.name,
        )
    cdf.set_xscale("log")
    cdf.set_xlabel("send-to-handler latency (us, log scale)")
    cdf.set_ylabel("fraction of messages")
    cdf.set_title("Latency CDF, one message at a time")
    cdf.grid(True, which="both", alpha=0.3)
    if lines:
        cdf.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    if scaling:
        by_producers = axes[0][1]
        for backend in sorted({str(r["backend"]) for r in scaling if r["series"] == "producers"}):
            rows = [r for r in scaling if r["series"] == "producers" and r["backend"] == backend]
            by_producers.plot(
                [r["producers"] for r in rows], [r["rate_per_s"] for r in rows], "o-", label=backend
            )
        by_producers.set_xlabel("producer threads")
        by_producers.set_ylabel("messages/s (log scale)")
        by_producers.set_yscale("log")
        by_producers.set_title("Throughput by producers")
        by_producers.grid(True, alpha=0.3)
        by_producers.legend(fontsize="small")
        by_workers = axes[0][2]
        rows = [r for r in scaling if r["series"] == "workers"]
        by_workers.plot([r["workers"] for r in rows], [r["rate_per_s"] for r in rows], "o-", label="measured")
        if rows:
            base = rows[0]["rate_per_s"]
            by_workers.plot(
                [r["workers"] for r in rows], [base * r["workers"] for r in rows], "--", label="N x one"
            )
        by_workers.set_xlabel("workers (handlers block 1 ms)")
        by_workers.set_ylabel("messages/s")
        by_workers.set_title("Throughput by workers")
        by_workers.grid(True, alpha=0.3)
        by_workers.legend(fontsize="small")
    fig.suptitle(f"nekobot_bus on {machine()}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
