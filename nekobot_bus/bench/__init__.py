"""Benchmarks that settle the latency claims: nekobot_bus beside raw baselines, in one run.

Run ``nekobot-bus bench`` (from a checkout: ``bash scripts/bench``);
``--help`` lists the options. ``benchmarks/README.rst`` explains each figure.
Needs the ``redis`` extra for the Redis lines and the ``bench`` extra for
the alternatives (blinker, kombu), the progress bar and ``--plot``.
"""

from ._options import BACKENDS, BenchOptions, add_arguments
from .runner import run

__all__ = ["BACKENDS", "BenchOptions", "add_arguments", "run"]
