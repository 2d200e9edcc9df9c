"""Percentiles, result lines and the plain-text table shared by every benchmark."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Claim", "Result", "percentile", "render_table"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[rank]


@dataclass(frozen=True)
class Claim:
    """What the Go design claims for a p50 latency, as a range in microseconds."""

    text: str
    low_us: float
    high_us: float

    def verdict(self, p50_us: float) -> str:
        """A plain sentence: within the claim, or how far off."""
        if p50_us < self.low_us * 0.5:
            return f"{self.low_us / p50_us:.0f}x faster than claimed"
        if p50_us <= self.high_us * 1.5:
            return "as claimed"
        return f"{p50_us / self.high_us:.0f}x slower than claimed"


#: The Go design's figures: about a microsecond in process, 1-5 ms over a local Redis.
LOCAL_CLAIM = Claim("~1 us", 0.5, 2.0)
REDIS_CLAIM = Claim("1-5 ms", 1000.0, 5000.0)


@dataclass
class Result:
    """One measured line: latencies in microseconds, rates in messages per second.

    :param rate: one producer, as fast as it can.
    :param rate_many: several producers at once (``--producers``).
    :param peak_mib: the most memory Python allocated while moving the throughput run.
    """

    name: str
    latencies_us: list[float] = field(default_factory=list)
    rate: float | None = None
    rate_many: float | None = None
    peak_mib: float | None = None
    claim: Claim | None = None
    note: str = ""

    def summary(self) -> dict[str, float | str | None]:
        values = sorted(self.latencies_us)
        out: dict[str, float | str | None] = {"name": self.name}
        for q in (50, 90, 99, 99.9):
            out[f"p{q:g}_us"] = percentile(values, q) if values else None
        out["max_us"] = values[-1] if values else None
        out["mean_us"] = statistics.fmean(values) if values else None
        out["rate_per_s"] = self.rate
        out["rate_many_per_s"] = self.rate_many
        out["peak_mib"] = self.peak_mib
        out["claim"] = self.claim.text if self.claim else None
        out["verdict"] = self.claim.verdict(percentile(values, 50)) if self.claim and values else None
        out["note"] = self.note
        return out


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1e5 else f"{value:,.0f}"
    return str(value)


def render_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """An aligned plain-text table of *rows* under *columns*; numbers right-aligned."""
    cells = [[_fmt(row.get(col)) for col in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows) for col in columns
    ]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        padded = (
            cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(r, widths, numeric, strict=True)
        )
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)
