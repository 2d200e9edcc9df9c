"""The bus from asyncio: awaitable sends and requests, and handlers that may be coroutines.

::

    from nekobot_bus.aio import create_async_bus

    async def main() -> None:
        async with create_async_bus({"bus": {"type": "redis"}}) as bus:
            async def answer(message):
                await bus.send_outbound(message.reply("hi"))
            bus.register_inbound_handler("telegram", answer)
            ...

:class:`AsyncBus` wraps any :class:`~nekobot_bus.Bus`; it is the same bus,
with the same metrics, threads and guarantees. How each part keeps the
event loop free:

- A send, ``request``, ``wait_idle``, ``start`` and ``stop`` run the bus's
  own call on a small thread pool of the :class:`AsyncBus` and await it: a
  full queue or a server that does not answer makes the caller wait for up
  to ``send_timeout``, never the loop. Sends awaited one after another keep
  their order, as the threaded calls do. Each direction has a pool of its
  own (:data:`CALL_THREADS` threads), and the rest a third: requests
  waiting for room in a full inbound queue cannot hold up the outbound
  sends of the coroutine handlers that would make that room.
- A coroutine-function handler runs on the loop that registered it. The
  bus's worker that took the message waits for the coroutine to finish,
  so one session's messages are handled in order, a handler that raises
  is counted in ``errors`` as any other, and ``wait_idle`` waits for the
  coroutines too. ``workers`` bounds how many run at once. A handler that
  is a plain function runs on the workers, as on the threaded bus.
- A request's reply is handed to the loop as soon as the bus reads it.
  Cancelling the awaiting task ends the request (``request_failures``);
  its timeout ends it as on the threaded bus (``request_timeouts``).

Register handlers before :meth:`AsyncBus.start`: on a running remote bus a
registration waits for the server to confirm it, holding the loop for that
round trip. Catch :class:`~nekobot_bus.RequestTimeoutError` for a request's
timeout (before Python 3.11 it is not an ``asyncio.TimeoutError``).
Stop the bus with ``await bus.stop()`` (or ``async with``), never with the
wrapped bus's own ``stop()`` on the loop: draining waits for coroutine
handlers, which need the loop running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeGuard, TypeVar

from .bus import Bus, as_direction
from .config import ConfigSource, create_bus
from .errors import BusClosedError, RequestTimeoutError
from .message import Message
from .registry import Direction, check_handler
from .requests import PendingRequest

__all__ = ["AsyncBus", "AsyncHandler", "create_async_bus"]

#: A handler of an :class:`AsyncBus`: a coroutine function, or a plain one.
AsyncHandler = Callable[[Message], Awaitable[object]] | Callable[[Message], object]

T = TypeVar("T")

#: Seconds between two looks, by a worker awaiting a coroutine, at whether its loop still runs.
_LOOP_CHECK = 1.0
#: Threads that carry out the bus's blocking calls for the loop.
CALL_THREADS = 8


def create_async_bus(config: ConfigSource | None = None) -> AsyncBus:
    """Build the bus *config* describes, as :func:`~nekobot_bus.create_bus` does, for asyncio."""
    return AsyncBus(create_bus(config))


class AsyncBus:
    """An asyncio face over *bus*, which it owns from now on: start and stop it through this.

    Thread-safe as the bus is; its coroutines are meant for one event loop.
    """

    def __init__(self, bus: Bus) -> None:
        #: The bus underneath: its metrics, health and options are this bus's.
        self.bus = bus
        prefix = f"nekobot-bus-{bus.thread_name}-aio"
        self._sends = {
            d: ThreadPoolExecutor(CALL_THREADS, thread_name_prefix=f"{prefix}-{d.value}") for d in Direction
        }
        self._calls = ThreadPoolExecutor(2, thread_name_prefix=prefix)  # start, stop, wait_idle
        self._calls_ended = False

    def __repr__(self) -> str:
        return f"<AsyncBus of {self.bus!r}>"

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        """Start the bus (connecting, for a remote one) without holding the loop."""
        await self._call(self.bus.start)

    async def stop(self, timeout: float = 10.0, drain: bool = True) -> bool:
        """Stop the bus as :meth:`Bus.stop <nekobot_bus.Bus.stop>` does; the loop keeps running the
        coroutine handlers it drains. Then its thread pools end."""
        if self._calls_ended:
            return True  # stopped before: the pools are gone
        try:
            return await self._call(self.bus.stop, timeout, drain)
        finally:
            self._calls_ended = True
            for pool in (*self._sends.values(), self._calls):
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    async def __aenter__(self) -> AsyncBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self.bus.running

    # -- handlers ---------------------------------------------------------

    def register_inbound_handler(self, channel_id: str, handler: AsyncHandler) -> None:
        """Call *handler* for each inbound message of *channel_id* (``"*"``: every channel)."""
        self.bus.register_inbound_handler(channel_id, self._handler(handler))

    def register_outbound_handler(self, channel_id: str, handler: AsyncHandler) -> None:
        """Call *handler* for each outbound message of *channel_id* (``"*"``: every channel)."""
        self.bus.register_outbound_handler(channel_id, self._handler(handler))

    #: Alias of :meth:`register_outbound_handler`, as in the Go gateway.
    register_handler = register_outbound_handler

    def unregister_inbound_handlers(self, channel_id: str) -> None:
        self.bus.unregister_inbound_handlers(channel_id)

    def unregister_outbound_handlers(self, channel_id: str) -> None:
        self.bus.unregister_outbound_handlers(channel_id)

    #: Alias of :meth:`unregister_outbound_handlers`, as in the Go gateway.
    unregister_handlers = unregister_outbound_handlers

    def _handler(self, handler: AsyncHandler) -> Callable[[Message], object]:
        check_handler(handler)
        if not _is_coroutine_function(handler):
            return handler
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"a coroutine handler runs on the event loop that registers it: register "
                f"{getattr(handler, '__qualname__', handler)!r} from a coroutine"
            ) from None
        return functools.partial(_run_on, loop, handler)

    # -- sending ----------------------------------------------------------

    async def send_inbound(self, message: Message) -> None:
        """:meth:`Bus.send_inbound <nekobot_bus.Bus.send_inbound>`, awaited; raises as it does."""
        await self._send(Direction.INBOUND, self.bus.send_inbound, message)

    async def send_outbound(self, message: Message) -> None:
        """:meth:`Bus.send_outbound <nekobot_bus.Bus.send_outbound>`, awaited; raises as it does."""
        await self._send(Direction.OUTBOUND, self.bus.send_outbound, message)

    async def send_many(self, direction: Direction | str, messages: Iterable[Message]) -> None:
        """:meth:`Bus.send_many <nekobot_bus.Bus.send_many>`, awaited; raises as it does."""
        way = as_direction(direction)
        await self._send(way, self.bus.send_many, way, list(messages))

    async def request(self, message: Message, timeout: float | None = 30.0) -> Message:
        """:meth:`Bus.request <nekobot_bus.Bus.request>`, awaited: the reply to *message*.

        Cancelling the awaiting task ends the request, counted ``request_failures``.

        :raises RequestTimeoutError: no reply came within *timeout* seconds of the send.
        """
        loop = asyncio.get_running_loop()
        replied: asyncio.Future[None] = loop.create_future()  # done once the request ended, however

        def ended(_pending: PendingRequest) -> None:  # any thread; the reply's reader, mostly
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it any more
                loop.call_soon_threadsafe(_settle, replied)

        asking = loop.run_in_executor(self._pool(Direction.INBOUND), self.bus._ask, message, ended)
        try:
            pending = await asyncio.shield(asking)
        except asyncio.CancelledError:
            asking.add_done_callback(self._forget_when_sent)
            raise
        try:
            await asyncio.wait_for(asyncio.shield(replied), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
            error = RequestTimeoutError(f"no reply to request {message.id!r} came within {timeout} s")
            if self.bus._forget(pending, error, timed_out=True):
                raise error from None
            await replied  # its reply (or stop()) is ending it on another thread, now
        except asyncio.CancelledError:
            self.bus._forget(pending, asyncio.CancelledError())
            raise
        return pending.result()

    def _forget_when_sent(self, asking: asyncio.Future[PendingRequest]) -> None:
        """A request cancelled while it was being sent: end it once sent."""
        if not asking.cancelled() and asking.exception() is None:
            self.bus._forget(asking.result(), asyncio.CancelledError())

    # -- observing --------------------------------------------------------

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """:meth:`Bus.wait_idle <nekobot_bus.Bus.wait_idle>`, awaited (coroutine handlers included)."""
        return await self._call(self.bus.wait_idle, timeout)

    def get_metrics(self) -> dict[str, int]:
        return self.bus.get_metrics()

    def gauge_names(self) -> frozenset[str]:
        return self.bus.gauge_names()

    def health(self) -> dict[str, Any]:
        return self.bus.health()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._calls_ended:
            raise BusClosedError(f"{self!r} was stopped")
        return await asyncio.get_running_loop().run_in_executor(self._calls, function, *args)

    async def _send(self, direction: Direction, function: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(direction), function, *args)

    def _pool(self, direction: Direction) -> ThreadPoolExecutor:
        if self._calls_ended:
            raise BusClosedError("the bus is stopped; nothing was sent")
        return self._sends[direction]


def _settle(replied: asyncio.Future[None]) -> None:
    """On the loop: the request ended (its awaiter reads how from the request)."""
    if not replied.done():
        replied.set_result(None)


def _run_on(
    loop: asyncio.AbstractEventLoop, handler: Callable[[Message], Awaitable[object]], message: Message
) -> None:
    """On a bus worker: run ``handler(message)`` on *loop* and wait for it, as a plain handler returns.

    :raises RuntimeError: the loop stopped before the coroutine finished (it is cancelled).
    """
    if (
        _running_loop() is loop
    ):  # a blocking call of the bus on the loop, inline dispatch: it would wait for itself
        raise RuntimeError(f"handler {handler!r} would wait for the event loop it is called on")
    future = asyncio.run_coroutine_threadsafe(_await(handler, message), loop)
    while not concurrent.futures.wait([future], _LOOP_CHECK).done:
        if not loop.is_running():
            future.cancel()
            raise RuntimeError(f"the event loop of handler {handler!r} stopped before it finished")
    future.result()  # what the handler raised, if anything


def _is_coroutine_function(handler: object) -> TypeGuard[Callable[[Message], Awaitable[object]]]:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the method, not callability
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _await(handler: Callable[[Message], Awaitable[object]], message: Message) -> None:
    await handler(message)
