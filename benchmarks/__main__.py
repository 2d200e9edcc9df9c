"""``python -m benchmarks``: the same run as ``nekobot-bus bench``."""

from __future__ import annotations

import argparse

from nekobot_bus.bench import add_arguments, run
from nekobot_bus.bench._options import DESCRIPTION, EPILOG


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
