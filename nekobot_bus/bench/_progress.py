"""A progress bar on stderr for runs longer than a couple of seconds (tqdm, from the ``bench`` extra)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counts measuring steps; shows a bar after two seconds when stderr is a terminal.

    Without tqdm installed, or with *enabled* false, it shows nothing.
    """

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415 - optional, from the bench extra
        except ImportError:
            return
        # disable=None: only on a terminal; delay: quick runs never show a bar.
        self._bar = tqdm(total=total, unit="step", delay=2.0, disable=None, leave=False)

    def step(self, label: str) -> None:
        """Mark one step done; *label* names the next one."""
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)
            self._bar.update(1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
