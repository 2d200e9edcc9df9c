"""A real mosquitto per test (or per session), with a config of its own; a test may kill and restart it."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .server_process import ServerProcess, free_port

__all__ = ["MosquittoBroker"]


class MosquittoBroker(ServerProcess):
    """One ``mosquitto`` on a free loopback port; its config, log and persistence in *directory*.

    :param users: user names and passwords; with any, anonymous clients are refused.
    :param settings: more lines for ``mosquitto.conf`` (``max_packet_size 2048``).
    """

    def __init__(
        self, directory: Path, *, users: dict[str, str] | None = None, settings: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise RuntimeError(
                "mosquitto is not installed; bash scripts/test installs it (Debian: mosquitto)"
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.users = users or {}
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            # As root, mosquitto would become the user "mosquitto", who cannot open this folder.
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.directory}/",
            "autosave_interval 1",  # a SIGKILL loses at most the last second of sessions
            f"log_dest file {self.directory}/mosquitto.log",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            *self.settings,
        ]
        if self.users:
            passwords = self.directory / "passwords"
            passwords.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [self._tool("mosquitto_passwd"), "-b", str(passwords), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _tool(self, name: str) -> str:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found is None:
            raise RuntimeError(f"{name} is not installed; it comes with Debian's mosquitto package")
        return found

    def start(self, timeout: float = 10.0) -> None:
        config = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto on port {self.port} did not come up")
            time.sleep(0.02)
