"""A real nats-server process per test (or per session), which a test can kill, pause and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .server_process import ServerProcess, free_port

__all__ = ["NatsServer"]


class NatsServer(ServerProcess):
    """One ``nats-server -js`` on a free loopback port, its log and JetStream store in *directory*."""

    def __init__(self, directory: Path, *extra_args: str) -> None:
        binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise RuntimeError(
                "nats-server is not installed; bash scripts/test installs it (Debian: nats-server)"
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-l", str(self.directory / "nats.log"),
            "-js", "-sd", str(self.directory / "jetstream"),  # kept across restarts, as on a real server
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"INFO"):  # the server greets every client
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server on port {self.port} did not come up")
            time.sleep(0.02)
