"""Agent processes of the queue-delivery tests (``tests.queue_agent``), started, read and killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PREFIX", "Agent", "example_agent", "wait_until_handled"]

ROOT = Path(__file__).resolve().parents[1]
WAIT = 20.0
#: The agents' key prefix on Redis; on NATS, tests pass a subject prefix of their own.
PREFIX = "nekobot:bus:"


@contextlib.contextmanager
def example_agent(redis_url: str) -> Iterator[subprocess.Popen[str]]:
    """``examples/redis_agent.py`` on *redis_url*, ready; at the end its stdin is closed (it prints
    its count and exits) and, if it did not, it is killed."""
    agent = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "redis_agent.py"), "--redis-url", redis_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "agent ready"
        yield agent
    finally:
        if agent.poll() is None:
            try:
                agent.communicate("", timeout=WAIT)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.communicate()


class Agent:
    """One ``tests.queue_agent`` process, on Redis (*address* ``host:port``) or NATS (a ``nats://`` URL)."""

    def __init__(self, address: str, log: Path, *args: str, prefix: str = PREFIX) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.queue_agent", address, prefix, str(log), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def handled(self) -> list[str]:
        return [line[0] for line in self.lines()]

    def lines(self) -> list[list[str]]:
        """``[id, content, session, time]`` per message handled, in handling order."""
        if not self.log.exists():
            return []
        return [line.split(" ") for line in self.log.read_text().splitlines() if line]

    def finish(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        assert self.proc.wait(WAIT) == 0
        self.proc.stdout.close()
        metrics: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return metrics

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def wait_until_handled(agents: list[Agent], ids: set[str], timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        counts = Counter(i for agent in agents for i in agent.handled())
        if ids <= set(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)
