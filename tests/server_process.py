"""What the tests' server processes share: a free port, and killing, pausing and restarting one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "suspend"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def suspend(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP *pid* and return once every thread of it has stopped.

    ``kill`` returns before the signal takes effect: on another core the
    server may still answer a PING or two, which a test that expects silence
    would take for a server that ignored the pause.
    """
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = {(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()}
        except FileNotFoundError:  # a thread ended while we looked
            states = {"?"}
        if states <= {"T", "t"}:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout} s: thread states {states}")
        time.sleep(0.001)


class ServerProcess:
    """A server the test started (``start()`` is each kind's), which it may kill, pause and restart."""

    process: subprocess.Popen[bytes] | None = None
    paused = False

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self, *, graceful: bool = False) -> None:
        """Kill the server (SIGKILL: no goodbye to clients; SIGTERM with *graceful*) and wait for it."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        self.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def restart(self, *, graceful: bool = False) -> None:
        self.stop(graceful=graceful)
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        suspend(self.process.pid)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False
