"""Percentiles and the result table shared by every benchmark."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Result", "percentile", "render_table"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[rank]


@dataclass
class Result:
    """One measured line: latencies in microseconds and/or a rate in messages per second."""

    name: str
    latencies_us: list[float] = field(default_factory=list)
    rate: float | None = None
    note: str = ""

    def summary(self) -> dict[str, float | str | None]:
        values = sorted(self.latencies_us)
        out: dict[str, float | str | None] = {"name": self.name, "rate_per_s": self.rate, "note": self.note}
        if values:
            for q in (50, 90, 99, 99.9):
                out[f"p{q:g}_us"] = percentile(values, q)
            out["max_us"] = values[-1]
            out["mean_us"] = statistics.fmean(values)
        return out


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1e5 else f"{value:,.0f}"
    return str(value)


def render_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """An aligned plain-text table of *rows* under *columns*."""
    cells = [[_fmt(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        padded = (
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        lines.append("  ".join(padded))
    return "\n".join(lines)
