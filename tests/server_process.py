"""What the tests' server processes share: a free port, and killing, pausing and restarting one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "suspend"]


# Every port free_port() has handed out in this process: a port chosen for a server that is
# not started yet is free again at once, and the system may hand it out a second time (a
# cluster of six nodes chosen before any starts once got one port twice).
_handed_out: set[int] = set()


def free_port(*, also_free: int = 0) -> int:
    """A loopback port that is free now and was never handed out before in this process.

    :param also_free: an offset whose port must be free and new too (a Redis
        Cluster node's bus port is 10000 above its own); 0: none.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        wanted = {port, port + also_free}
        if wanted & _handed_out or max(wanted) > 65535:
            continue
        if also_free:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + also_free))
                except OSError:
                    continue
        _handed_out.update(wanted)
        return port


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
