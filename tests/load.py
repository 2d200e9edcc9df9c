"""Load for fault tests: a thread that keeps sending, and a handler that notes what arrived."""

from __future__ import annotations

import threading
import time

from nekobot_bus import Bus, BusConnectionError, Message, UnroutedMessageError

__all__ = ["Handled", "Load", "wait_for_metric"]


class Load:
    """Sends one message every *every* seconds from a thread, noting which sends returned and which raised.

    Message ``n`` has the id ``m-{n}`` and the content ``str(n)``, on channel ``telegram``.
    """

    def __init__(self, bus: Bus, every: float = 0.01) -> None:
        self.bus = bus
        self.every = every
        self.acknowledged: list[str] = []
        self.refused: list[tuple[str, str]] = []  # message id, error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-load")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            message = Message(id=f"m-{n}", channel_id="telegram", session_id=f"s{n % 7}", content=str(n))
            n += 1
            try:
                self.bus.send_inbound(message)
                self.acknowledged.append(message.id)
            except (BusConnectionError, UnroutedMessageError) as exc:
                self.refused.append((message.id, str(exc)))
            self._stop.wait(self.every)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20.0)


class Handled:
    """A handler noting each message's id and when it came. Thread-safe."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.at: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self._lock:
            self.ids.append(message.id)
            self.at.append(time.monotonic())


def wait_for_metric(bus: Bus, key: str, at_least: int, timeout: float = 20.0) -> None:
    """Wait until *bus*'s metric *key* is at least *at_least*; fail the test if it never is."""
    deadline = time.monotonic() + timeout
    while bus.get_metrics()[key] < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.get_metrics()[key] >= at_least, f"{key} never reached {at_least}"
