"""``python -m benchmarks``: the benchmark of a checkout; the code is :mod:`nekobot_bus.bench`."""
