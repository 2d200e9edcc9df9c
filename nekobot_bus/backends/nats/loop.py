"""One asyncio event loop on a thread of its own, for a synchronous façade over an asyncio client.

The loop thread (``nekobot-bus-nats-loop``) belongs to the bus that made it:
it runs the NATS client, its reconnects and its subscription callbacks, and
nothing else; no handler ever runs on it. Other threads hand it coroutines
with :meth:`LoopThread.call`, which waits for the result at most as long as
it is told, and cancels the coroutine when that time is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An event loop running on its own daemon thread from :meth:`start` to :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Held while call() hands a coroutine over, and while the loop stops taking them:
        # a coroutine handed over is either started (and cancelled at stop) or refused.
        self._handing = threading.Lock()
        self._taking = False

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with self._handing:
                    self._taking = False
                # One more turn: what call() handed over before becomes a task (its body
                # not run yet), so that it is cancelled below rather than never awaited.
                loop.call_soon(loop.stop)
                loop.run_forever()
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self.loop = loop
        self._taking = True
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    @property
    def on_loop(self) -> bool:
        """Whether the calling thread is the loop's own."""
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run *coroutine* on the loop and return its result, waiting at most *timeout* seconds.

        :raises TimeoutError: the time was up (the coroutine is cancelled).
        :raises RuntimeError: the loop is not running, or stopped before the coroutine finished.
        """
        loop = self.loop
        with self._handing:
            if loop is None or not self._taking or not loop.is_running():
                coroutine.close()
                raise RuntimeError("the event loop is not running")
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None
        except concurrent.futures.CancelledError:  # stop() cancelled what still ran on the loop
            raise RuntimeError("the event loop stopped before the call finished") from None

    def stop(self, timeout: float) -> threading.Thread | None:
        """Stop the loop (cancelling what still runs on it); return its thread if it outlived *timeout*."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return None
        with contextlib.suppress(RuntimeError):  # closed meanwhile: the thread is ending anyway
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        return thread if thread.is_alive() else None
