"""A Redis Cluster of three primaries and three replicas, all our own, joined by ``redis-cli``.

Each node is a ``redis-server --cluster-enabled yes`` on a free loopback port
whose cluster bus port (port + 10000) is free too. The node timeout is 1 s
for a test's own cluster, so a killed primary is replaced by its replica
within about three seconds; the session's shared one, which no test harms,
waits 5 s, so that a loaded machine's stall does not fail it over.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from .redis_sentinel import FAST_SYNC
from .redis_server import RedisServer, free_port

__all__ = ["ClusterSet"]

READY_WITHIN = 30.0
NODE_TIMEOUT_MS = 1000


def _free_cluster_port() -> int:
    """A free port whose cluster bus port, 10000 above it, is free too."""
    return free_port(also_free=10000)


def _start_node(node: RedisServer, attempts: int = 3) -> None:
    """Start *node*, on another free pair of ports if its own was taken meanwhile.

    The ports are free when chosen, but they are in the range the machine
    hands out for outgoing connections, so another socket may take one
    before the node binds it (CI saw it once); before the cluster is
    created a node's port can still change.
    """
    for attempt in range(attempts):
        try:
            node.start()
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            node.port = _free_cluster_port()


class ClusterSet:
    """Six cluster nodes in *directory*: after :meth:`start`, three primaries, each with a replica."""

    def __init__(self, directory: Path, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self._directory = directory
        self.nodes: list[RedisServer] = []
        for n in range(6):
            node_dir = directory / f"node-{n}"
            node_dir.mkdir(parents=True, exist_ok=True)
            args = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                *FAST_SYNC,
            )  # fmt: skip
            self.nodes.append(RedisServer(node_dir, *args, port=_free_cluster_port()))

    def addresses(self) -> list[str]:
        """Every node's ``host:port``, as ``bus.redis_cluster_nodes`` takes them."""
        return [node.addr for node in self.nodes]

    def start(self) -> None:
        try:
            for node in self.nodes:
                _start_node(node)
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError(
                    "redis-cli is not installed; bash scripts/test installs it (Debian: redis-tools)"
                )
            created = subprocess.run(
                [cli, "--cluster", "create", *self.addresses(), "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
            self.wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_until_healthy(self, within: float = READY_WITHIN, primaries: int = 3) -> None:
        """Until every running node says the cluster is ok, and *primaries* replicas are in sync."""
        deadline = time.monotonic() + within
        while not self._healthy(primaries):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become healthy in time")
            time.sleep(0.05)

    def _healthy(self, primaries: int) -> bool:
        running = [node for node in self.nodes if node.process is not None]
        synced = 0
        try:
            for node in running:
                with node.client() as client:
                    info: Any = client.execute_command("CLUSTER", "INFO")
                    if b"cluster_state:ok" not in info:
                        return False
                    replication: Any = client.info("replication")
                    if replication["role"] == "slave" and replication.get("master_link_status") == "up":
                        synced += 1
        except redis.RedisError:
            return False
        return synced >= primaries

    def wait_until_replaced(self, gone: RedisServer, within: float = READY_WITHIN) -> float:
        """Until every running node serves all slots without *gone*; return the seconds it took."""
        started = time.monotonic()
        while not self._served_without(gone.port):
            if time.monotonic() - started > within:
                raise RuntimeError(f"no replica took over from the node on port {gone.port} in time")
            time.sleep(0.05)
        return time.monotonic() - started

    def _served_without(self, port: int) -> bool:
        try:
            for node in self.running():
                with node.client() as client:
                    info: Any = client.execute_command("CLUSTER", "INFO")
                    slots: Any = client.execute_command("CLUSTER", "SLOTS")
                if b"cluster_state:ok" not in info or any(int(s[2][1]) == port for s in slots):
                    return False
        except redis.RedisError:
            return False
        return True

    def primary_of(self, key: str) -> RedisServer:
        """The node that serves *key*'s slot now."""
        slot = self.slot_of(key)
        for node in self.running():
            with node.client() as client:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A running replica of *primary*."""
        for node in self.running():
            with node.client() as client:
                replication: Any = client.info("replication")
            if replication["role"] == "slave" and int(replication["master_port"]) == primary.port:
                return node
        raise RuntimeError(f"the primary on port {primary.port} has no running replica")

    def migrate_slot(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move *slot* and its keys from *source* to *target*, as ``redis-cli --cluster reshard`` does."""
        with source.client() as src, target.client() as dst:
            source_id = src.execute_command("CLUSTER", "MYID").decode()
            target_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.running():  # the others would learn it by gossip; now is sooner
            if node not in (source, target):
                with (
                    node.client() as client,
                    contextlib.suppress(redis.ResponseError),
                ):  # a replica may refuse
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def primary_ports(self) -> set[int]:
        """The ports of the nodes that serve slots now."""
        with self.running()[0].client() as client:
            return {int(s[2][1]) for s in client.execute_command("CLUSTER", "SLOTS")}

    def slot_of(self, key: str) -> int:
        with self.running()[0].client() as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
