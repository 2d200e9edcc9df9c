"""The ``nekobot-bus`` command: bench, tail, send and demo.

Exit status, for every command: 0 done; 1 the command ran but did not get
what it asked for (no reply, nobody listening, a missed target with
``--check``); 2 bad arguments or config; 3 Redis could not be reached;
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import BusConnectionError, NekobotBusError
from . import demo, send, tail
from ._status import EXIT_CONNECTION, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EPILOG = """\
exit status: 0 done, 1 not what was asked for (no reply, nobody listening,
a missed target with bench --check), 2 bad arguments or config, 3 Redis
could not be reached, 130 interrupted.

Start with 'printf "hello\\n" | nekobot-bus demo', then see COMMAND --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nekobot-bus",
        description="The message bus between chat channels and the agent that answers them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nekobot_bus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's warnings and info")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_bench(commands)
    tail.add_parser(commands)
    send.add_parser(commands)
    demo.add_parser(commands)
    for command in commands.choices.values():  # -v after the command too; SUPPRESS keeps one given before
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as nekobot-bus -v"
        )
        command.set_defaults(command_parser=command)
    return parser


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..bench._options import DESCRIPTION, EPILOG, add_arguments  # noqa: PLC0415

    bench = commands.add_parser(
        "bench",
        help="measure latency and throughput against raw baselines",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(bench)
    bench.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from ..bench.runner import run  # noqa: PLC0415 - loads the measuring code only when asked

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # The library logs reconnects and the like; a shell user sees errors only, unless -v.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="nekobot-bus: %(levelname)s %(message)s"
    )
    try:
        result: int = args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped (``tail | head -1``): done, as Unix tools are.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    except ModuleNotFoundError as exc:
        if exc.name not in _NEEDS_REDIS:
            raise
        print(
            f"error: nekobot-bus {args.command} needs the redis extra: pip install 'nekobot_bus[redis]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except BusConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except NekobotBusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


#: Modules of the ``redis`` extra; a command that cannot import them names the extra.
_NEEDS_REDIS = frozenset({"redis", "hiredis"})
