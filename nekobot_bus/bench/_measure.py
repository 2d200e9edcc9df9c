"""The measuring loops every backend shares: one at a time, under load, and peak memory."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from ..bus import Bus
from ..dispatch import Direction
from ..message import Message
from ._options import BenchOptions

__all__ = [
    "Alternation",
    "group_throughput",
    "STALL_SECONDS",
    "Load",
    "batch_size",
    "bus_latency",
    "bus_load",
    "loss_note",
    "messages",
    "now",
    "peak_mib",
    "producer_rates",
    "volume",
    "why_lost",
]

#: A run in which nothing more was handled for this long is over: what is missing was lost.
STALL_SECONDS = 10.0


class Load(NamedTuple):
    """What a throughput run measured, and what it lost."""

    rate: float
    latencies: list[float]
    lost: int = 0
    why: str = ""


def why_lost(metrics: dict[str, int]) -> str:
    """What a receiving bus's counters say about messages that never reached a handler."""
    reasons = []
    if metrics.get("dropped_in"):
        reasons.append(f"{metrics['dropped_in']} dropped by the bus (its intake_bytes or queues were full)")
    if metrics.get("reconnects"):
        reasons.append(
            f"the subscriber was cut {metrics['reconnects']} time(s), as Redis does to a reader over "
            "its client-output-buffer-limit for pubsub"
        )
    if metrics.get("decode_errors"):
        reasons.append(f"{metrics['decode_errors']} not decodable (over max_message_size?)")
    return "; ".join(reasons) or "no counter says why"


def batch_size(payload_size: int) -> int:
    """Messages per pipeline: 500, fewer for large payloads, so that one batch stays near 4 MiB."""
    return max(1, min(500, (4 << 20) // max(1, payload_size)))


def volume(payload_size: int) -> int:
    """Messages in a batched throughput run: 20,000, fewer past 256 MiB of payload (a user's Redis)."""
    return max(200, min(20_000, (256 << 20) // max(1, payload_size)))


def loss_note(lost: int, total: int, why: str) -> str:
    """A table note for *lost* of *total* messages, or ``""``."""
    return f"lost {lost} of {total}: {why}" if lost else ""


now = time.perf_counter
T = TypeVar("T")


def messages(count: int, payload_size: int = 1, sessions: int = 64) -> list[Message]:
    """*count* messages on channel ``bench`` with *payload_size* characters of content."""
    content = "x" * payload_size
    return [Message(channel_id="bench", session_id=f"s{n % sessions}", content=content) for n in range(count)]


def bus_latency(bus: Bus, count: int, payload_size: int = 1) -> list[float]:
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
        for message in messages(count, payload_size):
            sent_at[0] = now()
            bus.send_inbound(message)
            if not ack.acquire(timeout=5):
                raise RuntimeError(f"{bus!r} did not deliver a message within 5 s")
    return [v * 1e6 for v in out]


class Alternation:
    """Send-to-handler latency of a bare receiver and of a bus, message by message, in us.

    Both receivers run at once and the sender alternates between them, so
    whatever the shared machine does at any moment hits both alike. The
    bare receiver calls :meth:`bare_received` for each message it gets.
    """

    def __init__(self) -> None:
        self._ack = threading.Semaphore(0)
        self._sent_at = 0.0
        self.bare: list[float] = []
        self.ours: list[float] = []

    def bare_received(self, *_args: object) -> None:
        self.bare.append(now() - self._sent_at)
        self._ack.release()

    def _bus_received(self, _message: Message) -> None:
        self.ours.append(now() - self._sent_at)
        self._ack.release()

    def run(
        self,
        bus: Bus,
        publish_bare: Callable[[], T],
        count: int,
        payload_size: int,
        *,
        bare_done: Callable[[T], object] | None = None,
    ) -> tuple[list[float], list[float]]:
        """Alternate *publish_bare* and a send through *bus* (not yet started) *count* times.

        :param bare_done: called with what *publish_bare* returned, once the
            bare subscriber got the message: waits until the bare publisher
            has its server's answer too (an MQTT PUBACK). A send through the
            bus returns only then, so without it the bare lane's answer would
            be handled during the bus's turn and count against the bus.
        """
        bus.register_inbound_handler("bench", self._bus_received)
        with bus:
            for message in messages(count, payload_size):
                self._sent_at = now()
                sent = publish_bare()
                if not self._ack.acquire(timeout=5):
                    raise RuntimeError("the bare subscriber did not receive within 5 s")
                if bare_done is not None:
                    bare_done(sent)
                self._sent_at = now()
                bus.send_inbound(message)
                if not self._ack.acquire(timeout=5):
                    raise RuntimeError(f"{bus!r} did not deliver within 5 s")
        return [v * 1e6 for v in self.bare], [v * 1e6 for v in self.ours]


def bus_load(
    sender: Bus,
    receiver: Bus,
    count: int,
    *,
    producers: int = 1,
    payload_size: int = 1,
    handler_seconds: float = 0.0,
    sessions: int = 64,
) -> Load:
    """Move *count* messages, built beforehand, as fast as *producers* threads can send them.

    *receiver* (which may be *sender*) gets a handler, is started, and
    stopped at the end. Each message's send time is noted by its id, so the
    latencies include the time spent queued behind others.

    :param handler_seconds: how long each handler call blocks, as on I/O.
    :returns: messages per second until the last was handled (or until
        nothing more was handled for :data:`STALL_SECONDS`), the latencies in
        us, and how many were lost and why.
    """
    done = threading.Semaphore(0)
    latencies: list[float] = []
    sent_at: dict[str, float] = {}

    def handler(message: Message) -> None:
        if handler_seconds:
            time.sleep(handler_seconds)
        latencies.append(now() - sent_at[message.id])
        done.release()

    receiver.register_inbound_handler("bench", handler)
    content = "x" * payload_size
    batches = [
        [
            Message(channel_id="bench", session_id=f"p{p}s{n % sessions}", content=content)
            for n in range(count // producers + (1 if p < count % producers else 0))
        ]
        for p in range(producers)
    ]
    errors: list[BaseException] = []

    def produce(batch: list[Message]) -> None:
        send = sender.send_inbound
        try:
            for message in batch:
                sent_at[message.id] = now()
                send(message)
        except Exception as exc:  # raised again in the measuring thread below
            errors.append(exc)

    with receiver:
        if sender is not receiver:
            sender.start()
        threads = [
            threading.Thread(target=produce, args=(batch,), name=f"bench-producer-{p}")
            for p, batch in enumerate(batches)
        ]
        started = now()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        handled = 0
        last_at = now()
        while handled < count and done.acquire(timeout=STALL_SECONDS):
            handled += 1
            last_at = now()
        elapsed = last_at - started
        if sender is not receiver:
            sender.stop()
    lost = count - handled
    return Load(
        handled / elapsed,
        [v * 1e6 for v in latencies],
        lost,
        why_lost(receiver.get_metrics()) if lost else "",
    )


def group_throughput(consumers: list[Bus], producer: Bus, count: int, payload_size: int) -> Load:
    """Messages per second from *producer*, sending batches with ``send_many``, through *consumers*
    (buses of one group, not yet started), measured until every message was handled. All are
    stopped at the end."""
    handled = threading.Semaphore(0)

    def handler(_message: Message) -> None:
        handled.release()

    try:
        for bus in consumers:
            bus.register_inbound_handler("bench", handler)
            bus.start()
        producer.start()
        batches = messages(count, payload_size)
        batch = batch_size(payload_size)
        started = now()
        for i in range(0, count, batch):
            producer.send_many(Direction.INBOUND, batches[i : i + batch])
        done, last_at = 0, now()
        while done < count and handled.acquire(timeout=STALL_SECONDS):
            done, last_at = done + 1, now()
        lost = count - done
        why = "; ".join(why_lost(bus.get_metrics()) for bus in consumers) if lost else ""
        return Load(done / (last_at - started), [], lost, why)
    finally:
        for bus in [*consumers, producer]:
            bus.stop(timeout=10)


def producer_rates(
    make_bus: Callable[[int], Bus], count: int, options: BenchOptions
) -> tuple[float, float, str]:
    """Rates with one producer and with ``options.producers``, from a sender to a receiver on its own.

    :param make_bus: builds a bus with the given number of workers (the
        sender gets one, the receiver ``options.workers``).
    :returns: the two rates, and a note of what either run lost.
    """
    one = bus_load(make_bus(1), make_bus(options.workers), count, payload_size=options.payload_size)
    many = bus_load(
        make_bus(1),
        make_bus(options.workers),
        count,
        producers=options.producers,
        payload_size=options.payload_size,
    )
    notes = [loss_note(run.lost, count, run.why) for run in (one, many) if run.lost]
    return one.rate, many.rate, "; ".join(notes)


def peak_mib(run: Callable[[], T]) -> float:
    """The peak of Python allocations, in MiB, while *run* runs (tracemalloc; slows it down)."""
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024)
