"""Three OS processes on one Redis: two gateways and an agent hold a conversation."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
WAIT = 20.0


class Process:
    def __init__(self, role: str, server: RedisServer) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chat_process", role, server.addr],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"read-{role}")
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, line: str) -> None:
        assert self.lines.get(timeout=WAIT) == line

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(WAIT) == 0
        self.reader.join(WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return list(self.lines.queue)


def test_two_gateways_and_an_agent_in_separate_processes(redis_server: RedisServer) -> None:
    agent = Process("agent", redis_server)
    telegram = Process("telegram", redis_server)
    discord = Process("discord", redis_server)
    processes = [agent, telegram, discord]
    try:
        for p in processes:
            p.expect("ready")
        telegram.say("hi from telegram")
        discord.say("hi from discord")
        telegram.expect("reply agent to telegram: hi from telegram")
        discord.expect("reply agent to discord: hi from discord")
        telegram.say("second")
        telegram.expect("reply agent to telegram: second")
        # Each gateway got its own replies and nothing else.
        assert telegram.finish() == []
        assert discord.finish() == []
        assert agent.finish() == []
    finally:
        for p in processes:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(WAIT)
