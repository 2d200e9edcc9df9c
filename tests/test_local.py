"""What only the threaded or the inline local bus does: queues, workers, stop modes."""

from __future__ import annotations

import threading
import time

import pytest

from nekobot_bus import BusClosedError, BusFullError, LocalBus, Message

WAIT = 10.0


def msg(session: str = "s1", content: str = "") -> Message:
    return Message(channel_id="telegram", session_id=session, content=content)


class BlockingHandler:
    """A handler that blocks until released, and tells when a call has entered."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, message: Message) -> None:
        self.entered.set()
        self.gate.wait(WAIT)

    def release(self) -> None:
        self.gate.set()


def test_full_queue_raises_bus_full_after_send_timeout() -> None:
    bus = LocalBus(workers=1, queue_size=2, send_timeout=0.2)
    gate = threading.Event()
    bus.register_inbound_handler("telegram", lambda m: gate.wait(WAIT))
    try:
        bus.start()
        for _ in range(3):  # one in the handler, two in the queue
            bus.send_inbound(msg())
        deadline = time.monotonic() + WAIT
        while bus.get_metrics()["queue_depth"] < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        with pytest.raises(BusFullError, match="stayed full"):
            bus.send_inbound(msg())
        assert 0.15 <= time.monotonic() - started < 2.0
        assert isinstance(BusFullError("x"), TimeoutError)
    finally:
        gate.set()
        assert bus.stop(WAIT)
    m = bus.get_metrics()
    assert (m["messages_in"], m["handled_in"], m["send_timeouts"]) == (3, 3, 1)


def test_sending_before_start_beyond_the_bound_raises() -> None:
    bus = LocalBus(workers=1, queue_size=3, send_timeout=0.05)
    for _ in range(3):
        bus.send_inbound(msg())
    with pytest.raises(BusFullError):
        bus.send_inbound(msg())
    assert bus.stop(WAIT)
    m = bus.get_metrics()
    # Never started: what waited is dropped, and counted.
    assert (m["messages_in"], m["dropped_in"], m["send_timeouts"]) == (3, 3, 1)


def test_stop_without_drain_counts_what_it_discards() -> None:
    bus = LocalBus(workers=1, queue_size=50)
    handler = BlockingHandler()
    bus.register_inbound_handler("telegram", handler)
    bus.start()
    for _ in range(20):
        bus.send_inbound(msg())
    assert handler.entered.wait(WAIT)
    threading.Timer(0.1, handler.release).start()
    assert bus.stop(WAIT, drain=False)
    m = bus.get_metrics()
    assert m["handled_in"] == 1
    assert m["dropped_in"] == 19
    assert m["messages_in"] == m["handled_in"] + m["dropped_in"]


def test_stop_returns_by_its_timeout_when_a_handler_hangs() -> None:
    bus = LocalBus(workers=1)
    stuck = BlockingHandler()
    bus.register_inbound_handler("telegram", stuck)
    bus.start()
    bus.send_inbound(msg())
    bus.send_inbound(msg())
    assert stuck.entered.wait(WAIT)
    started = time.monotonic()
    assert bus.stop(timeout=0.3) is False
    assert time.monotonic() - started < 1.0
    stuck.release()  # the handler returns; the worker counts the rest and exits
    assert bus.wait_idle(WAIT)
    m = bus.get_metrics()
    assert (m["handled_in"], m["dropped_in"]) == (1, 1)


def test_a_sender_blocked_on_a_full_queue_sees_the_stop() -> None:
    bus = LocalBus(workers=1, queue_size=1, send_timeout=WAIT)
    gate = threading.Event()
    bus.register_inbound_handler("telegram", lambda m: gate.wait(WAIT))
    bus.start()
    bus.send_inbound(msg())
    bus.send_inbound(msg())
    outcome: list[BaseException] = []

    def blocked_sender() -> None:
        try:
            bus.send_inbound(msg())
        except BusClosedError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=blocked_sender, name="blocked-sender")
    sender.start()
    time.sleep(0.1)
    threading.Timer(0.1, gate.set).start()
    assert bus.stop(WAIT)
    sender.join(WAIT)
    assert len(outcome) == 1
    m = bus.get_metrics()
    assert (m["messages_in"], m["handled_in"]) == (2, 2)


def test_wait_idle_times_out_while_a_handler_is_busy() -> None:
    gate = threading.Event()
    with LocalBus() as bus:
        bus.register_inbound_handler("telegram", lambda m: gate.wait(WAIT))
        bus.send_inbound(msg())
        assert not bus.wait_idle(0.05)
        assert bus.get_metrics()["queue_depth"] == 1
        gate.set()
        assert bus.wait_idle(WAIT)


def test_different_sessions_run_in_parallel() -> None:
    workers = 4
    first = "session-a"
    # Sessions map to workers by hash; pick one that lands on another worker.
    other = next(
        f"session-{n}" for n in range(100) if hash(f"session-{n}") % workers != hash(first) % workers
    )
    gate = threading.Event()
    other_done = threading.Event()

    def handler(message: Message) -> None:
        if message.session_id == first:
            gate.wait(WAIT)
        else:
            other_done.set()

    with LocalBus(workers=workers) as bus:
        bus.register_inbound_handler("telegram", handler)
        bus.send_inbound(msg(first))
        bus.send_inbound(msg(other))
        assert other_done.wait(WAIT), "a blocked session held up another session"
        gate.set()


def test_worker_threads_are_named_and_gone_after_stop() -> None:
    bus = LocalBus(workers=2)
    bus.start()
    names = {t.name for t in threading.enumerate()}
    assert {"nekobot-bus-local-inbound-0", "nekobot-bus-local-outbound-1"} <= names
    assert bus.stop(WAIT)
    assert not [t for t in threading.enumerate() if t.name.startswith("nekobot-bus")]


def test_inline_dispatch_runs_handlers_in_the_sending_thread() -> None:
    threads: list[str] = []
    with LocalBus(dispatch="inline") as bus:
        bus.register_inbound_handler("telegram", lambda m: threads.append(threading.current_thread().name))
        bus.send_inbound(msg())
        assert threads == [threading.current_thread().name]
        assert bus.get_metrics()["queue_depth"] == 0


@pytest.mark.parametrize("drain", [True, False])
def test_inline_no_handler_runs_after_stop_returned(drain: bool) -> None:
    bus = LocalBus(dispatch="inline")
    inside = threading.Event()
    finished_at: list[float] = []

    def slow(message: Message) -> None:
        inside.set()
        time.sleep(0.3)
        finished_at.append(time.monotonic())

    bus.register_inbound_handler("telegram", slow)
    bus.start()
    sender = threading.Thread(target=bus.send_inbound, args=(Message(channel_id="telegram"),))
    sender.start()
    try:
        assert inside.wait(5)
        assert bus.stop(timeout=5, drain=drain)
        stopped_at = time.monotonic()
        assert finished_at, "stop() returned before the running handler finished"
        assert finished_at[0] <= stopped_at
        with pytest.raises(BusClosedError):
            bus.send_inbound(Message(channel_id="telegram"))
    finally:
        sender.join(5)
