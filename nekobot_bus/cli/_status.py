"""The exit statuses of every ``nekobot-bus`` command, ``bench`` included."""

from __future__ import annotations

__all__ = ["EXIT_CONNECTION", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

#: Done.
EXIT_OK = 0
#: The command ran but did not get what it asked for: no reply, nobody
#: listening, a missed speed target with ``bench --check``.
EXIT_FAILED = 1
#: Bad arguments or config.
EXIT_USAGE = 2
#: The server could not be reached.
EXIT_CONNECTION = 3
#: Ctrl-C.
EXIT_INTERRUPTED = 130
