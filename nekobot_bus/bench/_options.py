"""What a benchmark run measures, as the command line asks for it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BACKENDS", "BenchOptions"]

#: The backends ``--backend`` accepts, besides ``all``.
BACKENDS = ("local", "local-inline", "redis", "redis-queue")


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
    scaling: bool = False
