"""A real redis-server process per test, which a test can kill, pause and restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from .server_process import ServerProcess, free_port, suspend

__all__ = ["RedisServer", "free_port", "suspend"]  # the last two: from server_process


class RedisServer(ServerProcess):
    """One ``redis-server`` on a free loopback port, data kept in *directory*."""

    def __init__(
        self, directory: Path, *extra_args: str, password: str | None = None, port: int | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; bash scripts/test installs it (Debian: redis-server)"
            )
        self.binary = binary
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.password = password
        self.extra_args = (*extra_args, "--requirepass", password) if password else extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as client:
                    answered = client.info("server")["process_id"]
                if answered != self.process.pid:  # another server has the port: ours cannot bind it
                    self.stop()
                    raise RuntimeError(f"port {self.port} is taken by another redis-server (pid {answered})")
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not come up") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
