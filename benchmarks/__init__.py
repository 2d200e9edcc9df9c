"""Latency and throughput of nekobot_bus against raw baselines, in one run.

Run from a checkout: ``python -m benchmarks`` (see ``--help``).
"""
