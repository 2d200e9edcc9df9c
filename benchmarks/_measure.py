"""The measuring loops every backend shares."""

from __future__ import annotations

import threading
import time

from nekobot_bus import Bus, Message

__all__ = ["bus_latency", "messages", "now"]

now = time.perf_counter


def messages(count: int, sessions: int = 64) -> list[Message]:
    """*count* small messages on channel ``bench``, spread over *sessions*."""
    return [Message(channel_id="bench", session_id=f"s{n % sessions}", content="x") for n in range(count)]


def bus_latency(bus: Bus, count: int) -> list[float]:
    """Send-to-handler latency through *bus* (not yet started), one message at a time, in us.

    The sender takes a timestamp, sends, and waits for the handler's
    acknowledgement before the next message, so no message waits behind another.
    """
    ack = threading.Semaphore(0)
    sent_at = [0.0]
    out: list[float] = []

    def handler(message: Message) -> None:
        out.append(now() - sent_at[0])
        ack.release()

    bus.register_inbound_handler("bench", handler)
    with bus:
        for message in messages(count):
            sent_at[0] = now()
            bus.send_inbound(message)
            if not ack.acquire(timeout=5):
                raise RuntimeError(f"{bus!r} did not deliver a message within 5 s")
    return [v * 1e6 for v in out]
