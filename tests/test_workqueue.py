"""A worker's queue: handing an item over to a worker that waits for one, and when not to wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from nekobot_bus import Message, _workqueue
from nekobot_bus._workqueue import STOP, Item, WorkQueue
from nekobot_bus.metrics import Metrics

WAIT = 10.0


def item() -> Item[None]:
    return Item(Message(channel_id="telegram", content="hi"), None, 0)


class Worker:
    """A thread that takes items from *queue* and, for each, waits for ``proceed`` before the next."""

    def __init__(self, queue: WorkQueue[None]) -> None:
        self.queue = queue
        self.taken: list[Item[None]] = []
        self.proceed = threading.Event()
        self.proceed.set()
        self._thread = threading.Thread(target=self._run, name="test-worker")
        self._thread.start()

    def _run(self) -> None:
        while True:
            got = self.queue.get()
            if got is STOP:
                return
            assert isinstance(got, Item)
            self.taken.append(got)
            self.proceed.wait(WAIT)

    def waiting(self) -> bool:
        deadline = time.monotonic() + WAIT
        while not self.queue._worker_waiting:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def stop(self) -> None:
        self.proceed.set()
        self.queue.seal()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


@pytest.fixture
def queue() -> WorkQueue[None]:
    return WorkQueue(10, Metrics(), "messages_in", lambda _item: None)


@pytest.fixture
def worker(queue: WorkQueue[None]) -> Iterator[Worker]:
    running = Worker(queue)
    yield running
    running.stop()


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-over bound no scheduler on a loaded machine reaches: the results below are then certain."""
    monkeypatch.setattr(_workqueue, "HAND_OVER_SECONDS", WAIT)


@pytest.mark.usefixtures("patient")
def test_a_put_with_hand_over_returns_once_the_waiting_worker_took_the_item(
    queue: WorkQueue[None], worker: Worker
) -> None:
    for n in range(20):
        assert worker.waiting()
        queue.put(item(), bounded=False, hand_over=True)
        # Without the hand-over this thread keeps the interpreter and the item is still queued.
        assert queue.qsize() == 0, f"put {n} returned before the worker took its item"


@pytest.mark.usefixtures("patient")
def test_a_put_with_hand_over_does_not_wait_for_a_busy_worker(queue: WorkQueue[None], worker: Worker) -> None:
    worker.proceed.clear()  # the worker holds its first item until told
    queue.put(item(), bounded=False)
    deadline = time.monotonic() + WAIT
    while not worker.taken and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.taken
    assert not queue._worker_waiting  # busy in its handler
    started = time.monotonic()
    queue.put(item(), bounded=False, hand_over=True)
    assert time.monotonic() - started < WAIT / 2  # it did not wait for the patient bound
    assert queue.qsize() == 1


def test_a_hand_over_nobody_takes_ends_at_its_bound_and_the_next_one_still_waits(
    queue: WorkQueue[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workqueue, "HAND_OVER_SECONDS", 0.05)
    queue._worker_waiting = True  # as a worker that the scheduler has not run yet
    started = time.monotonic()
    queue.put(item(), bounded=False, hand_over=True)
    assert time.monotonic() - started >= 0.05
    assert queue.qsize() == 1
    queue._worker_waiting = False
    queue.get()  # taken after the putter gave up: nothing is left to release
    monkeypatch.setattr(_workqueue, "HAND_OVER_SECONDS", WAIT)
    worker = Worker(queue)
    try:
        assert worker.waiting()
        queue.put(item(), bounded=False, hand_over=True)
        assert queue.qsize() == 0  # it waited again, rather than returning on a stale release
    finally:
        worker.stop()


@pytest.mark.usefixtures("patient")
def test_two_threads_handing_over_to_one_worker_each_wait_for_a_take_of_their_own(
    queue: WorkQueue[None], worker: Worker
) -> None:
    """A release meant for one putter must not reach the other, nor be made twice (the worker
    would die of it, and what waits behind would never be handled)."""
    per_thread = 300
    failures: list[BaseException] = []

    def putter() -> None:
        try:
            for _ in range(per_thread):
                queue.put(item(), bounded=False, hand_over=True)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=putter, name=f"test-putter-{n}") for n in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a putter waited past every bound"
    assert not failures
    deadline = time.monotonic() + WAIT
    while len(worker.taken) < 2 * per_thread and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(worker.taken) == 2 * per_thread, "the worker stopped taking items"
    assert time.monotonic() - started < WAIT
