"""A Redis master with two replicas, watched by three ``redis-server --sentinel`` processes, all our own.

The sentinels run with short timeouts (down after 1 s; INFO every 100 ms
through ``SENTINEL DEBUG``), so a killed master is replaced within about two
seconds, or after ``failover-timeout`` x 2 (6 s) when their first election
splits the vote. Two periods stay as they are, found the hard way: PING
(a replica's INFO counts as fresh for five PING periods, and while the
master is down sentinels ask replicas only once a second, so a shorter PING
period leaves no replica good enough to promote), and hello at 500 ms
(faster, and a sentinel that has not heard of a failover's new epoch yet
turns the freshly promoted replica back into a replica).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from .redis_server import RedisServer, free_port

__all__ = ["FAST_SYNC", "MASTER_NAME", "SentinelSet"]

MASTER_NAME = "nekobot-master"
#: Redis waits 5 s before a diskless full sync, for more replicas to join it; not here.
FAST_SYNC = ("--repl-diskless-sync-delay", "0")
READY_WITHIN = 20.0


class _Sentinel:
    """One ``redis-server --sentinel`` with its own config file (a sentinel rewrites it)."""

    def __init__(self, directory: Path, binary: str, master_port: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n"
        )
        self.process = subprocess.Popen(
            [binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


class SentinelSet:
    """A master, two replicas and three sentinels on free loopback ports, in *directory*."""

    def __init__(self, directory: Path) -> None:
        # No 5 s wait before a full sync (Redis' default for diskless replication).
        self.master = RedisServer(directory / "master", *FAST_SYNC)
        self.servers = [self.master]
        self.sentinels: list[_Sentinel] = []
        self._directory = directory

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.master.directory.mkdir(parents=True, exist_ok=True)
        self.master.start()
        for n in range(2):
            directory = self._directory / f"replica-{n}"
            directory.mkdir(parents=True, exist_ok=True)
            replica = RedisServer(directory, "--replicaof", "127.0.0.1", str(self.master.port), *FAST_SYNC)
            replica.start()
            self.servers.append(replica)
        for n in range(3):
            self.sentinels.append(
                _Sentinel(self._directory / f"sentinel-{n}", self.master.binary, self.master.port)
            )
        deadline = time.monotonic() + READY_WITHIN
        for sentinel in self.sentinels:
            while True:
                try:
                    with sentinel.client() as client:
                        client.execute_command("SENTINEL", "DEBUG", "INFO-PERIOD", 100, "PUBLISH-PERIOD", 500)
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sentinel on port {sentinel.port} did not come up") from None
                    time.sleep(0.02)
        self.wait_until_settled(deadline - time.monotonic())

    def wait_until_settled(self, within: float = READY_WITHIN, replicas: int = 2) -> int:
        """Until every sentinel agrees on a master that answers, with *replicas* replicas in sync, and
        sees the other sentinels; return the master's port.

        A failover may be followed by another (a sentinel that took the new
        master for down under load): this waits for the last.
        """
        deadline = time.monotonic() + within
        while True:
            port = self._settled(replicas)
            if port is not None:
                return port
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not agree on a master with two replicas in time")
            time.sleep(0.05)

    def _settled(self, replicas: int) -> int | None:
        masters = {self._master_seen_by(sentinel, replicas) for sentinel in self.sentinels}
        if len(masters) != 1 or None in masters:
            return None
        [port] = masters
        assert port is not None
        return port if self._replicas_in_sync(port) >= replicas else None

    @staticmethod
    def _master_seen_by(sentinel: _Sentinel, in_sync: int) -> int | None:
        """The master's port, if *sentinel* sees it up with two good replicas and both other sentinels."""
        try:
            with sentinel.client() as client:
                info: Any = client.sentinel_master(MASTER_NAME)
                replicas: Any = client.sentinel_slaves(MASTER_NAME)
        except redis.RedisError:
            return None
        calm = not (info["is_sdown"] or info["is_odown"] or "failover" in str(info["flags"]))
        known = int(info["num-other-sentinels"]) >= 2
        # A replica it sees out of sync would make it find none good enough to promote.
        promotable = [r for r in replicas if r["master-link-status"] == "ok" and not r["is_sdown"]]
        known = known and len(promotable) >= in_sync
        return int(info["port"]) if calm and known else None

    def _replicas_in_sync(self, port: int) -> int:
        try:
            with self.server_on(port).client() as client:
                info: Any = client.info("replication")
        except redis.RedisError:
            return 0
        if info.get("role") != "master":
            return 0
        return sum(
            1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online"
        )

    def master_port(self) -> int:
        """The master's port as the first sentinel names it."""
        with self.sentinels[0].client() as client:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: a replica is promoted, the master (still running) becomes a replica."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with self.sentinels[0].client() as client:
                    client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
                return
            except redis.ResponseError as exc:  # NOGOODSLAVE while its view of a replica is stale
                if not str(exc).startswith("NOGOODSLAVE") or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
