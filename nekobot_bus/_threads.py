"""Helpers for the threads the library owns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["join_all"]


def join_all(threads: Iterable[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join *threads* against one shared :func:`time.monotonic` *deadline*.

    :returns: the threads still alive when the deadline passed.
    """
    alive = []
    for thread in threads:
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread)
    return alive
