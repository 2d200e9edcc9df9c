"""What people would use instead, measured the same way: blinker in process, kombu over Redis.

Both come with the ``bench`` extra; each function returns ``None`` when its
library is not installed, and the line is left out of the table.
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import Any

from ..message import Message
from ._measure import messages, now

__all__ = ["KombuLane", "blinker_inline"]


def blinker_inline(count: int, payload_size: int) -> tuple[list[float], float] | None:
    """blinker's ``signal.send`` to one receiver: latencies (us) one at a time, and the rate."""
    try:
        import blinker  # noqa: PLC0415 - optional
    except ImportError:
        return None
    signal = blinker.Namespace().signal("bench")
    latencies: list[float] = []
    sent_at = [0.0]

    def receiver(_sender: object, message: Message) -> None:
        latencies.append(now() - sent_at[0])

    signal.connect(receiver)
    batch = messages(count, payload_size)
    for message in batch:
        sent_at[0] = now()
        signal.send("bench", message=message)
    signal.disconnect(receiver)
    signal.connect(_ignore)
    started = now()
    for message in batch:
        signal.send("bench", message=message)
    rate = count / (now() - started)
    return [v * 1e6 for v in latencies], rate


def _ignore(_sender: object, message: Message) -> None:
    pass


class KombuLane:
    """kombu's Redis transport: a ``SimpleQueue`` producer here and a consumer thread.

    Use :meth:`open` (``None`` without kombu), then :meth:`once` per message,
    then :meth:`close`.
    """

    def __init__(self, url: str) -> None:
        from kombu.connection import Connection  # noqa: PLC0415 - optional

        self._name = f"nekobot-bench-kombu-{uuid.uuid4().hex[:8]}"
        self._url = url
        self._ack = threading.Semaphore(0)
        self._sent_at = 0.0
        self._latency = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._conn: Any = Connection(url)
        self._queue: Any = self._conn.SimpleQueue(self._name)
        self._consumer = threading.Thread(target=self._consume, name="bench-kombu-consumer")
        self._consumer.start()
        if not self._ready.wait(10):
            self.close()
            raise RuntimeError("kombu's consumer did not start within 10 s")

    @classmethod
    def open(cls, url: str) -> KombuLane | None:
        """The lane, or ``None`` (saying why on stderr) when kombu is not installed or cannot run here."""
        try:
            from kombu.exceptions import VersionMismatch  # noqa: PLC0415 - optional
        except ImportError:
            return None
        try:
            return cls(url)
        except VersionMismatch as exc:  # kombu 5.5+ wants a newer redis-py than ours may be
            print(f"note: the kombu line is left out: {exc}", file=sys.stderr)
            return None

    def _consume(self) -> None:
        from kombu.connection import Connection  # noqa: PLC0415 - optional

        with Connection(self._url) as conn:
            q = conn.SimpleQueue(self._name)
            self._ready.set()
            try:
                while not self._stop.is_set():
                    try:
                        message: Any = q.get(block=True, timeout=0.5)
                    except q.Empty:
                        continue
                    self._latency = now() - self._sent_at
                    message.ack()
                    self._ack.release()
            finally:
                q.close()

    def once(self, body: dict[str, Any]) -> float:
        """Send *body* and wait for the consumer; return the latency in us."""
        self._sent_at = now()
        self._queue.put(body, serializer="json")
        if not self._ack.acquire(timeout=10):
            raise RuntimeError("kombu's consumer did not receive within 10 s")
        return self._latency * 1e6

    def close(self) -> None:
        """Stop the consumer and remove what kombu left in Redis: the queue and its bindings."""
        self._stop.set()
        self._consumer.join()
        self._queue.clear()
        self._queue.close()
        self._conn.close()
        import redis  # noqa: PLC0415 - kombu's Redis transport needs it too

        client = redis.Redis.from_url(self._url)
        try:  # kombu keeps an exchange's bindings in sets of its own, named after the queue here
            client.delete(
                *(f"{kind}.{self._name}" for kind in ("_kombu.binding", "_kombu.binding_permanent"))
            )
        finally:
            client.close()
