"""Shared fixtures: the backend matrix and the no-leftover-threads guard."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import Bus, create_bus

from .mosquitto_broker import MosquittoBroker
from .nats_server import NatsServer
from .redis_cluster import ClusterSet
from .redis_sentinel import MASTER_NAME, SentinelSet
from .redis_server import RedisServer

BusFactory = Callable[..., Bus]

# Each entry: the id of the backend and the config that builds it. Backends
# that need a server add their entries from their own fixtures (see redis_server).
LOCAL_BACKENDS: dict[str, dict[str, Any]] = {
    "local": {"bus": {"type": "local"}},
    "local-inline": {"bus": {"type": "local", "dispatch": "inline"}},
}


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread running after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    leftover: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leftover:
            return
        time.sleep(0.01)
    pytest.fail(f"threads left behind: {[t.name for t in leftover]}")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server of our own, killed at the end of the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_config(server: RedisServer, **bus: Any) -> dict[str, Any]:
    """A RedisBus config for *server*, with short health checks for fault tests."""
    return {
        "bus": {
            "type": "redis",
            "redis_addr": server.addr,
            "health_check_interval": 0.5,
            "health_check_timeout": 1.0,
            **bus,
        }
    }


def queue_config(server: RedisServer, **bus: Any) -> dict[str, Any]:
    """A queue-delivery config for *server*: short claim and retry times for fault tests."""
    return {
        "bus": {
            "type": "redis",
            "delivery": "queue",
            "redis_addr": server.addr,
            "health_check_timeout": 1.0,
            "claim_idle": 1.0,
            "retry_backoff": 0.05,
            **bus,
        }
    }


@pytest.fixture(scope="session")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for the tests that do not harm it (each uses its own subject prefix)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, which it may kill, pause and restart."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One mosquitto for the tests that do not harm it (each uses its own topic prefix)."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto of this test's own, which it may kill, pause and restart."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def mqtt_config(broker: MosquittoBroker, **bus: Any) -> dict[str, Any]:
    """An MQTT config for *broker*, with a topic prefix of its own and a quick keepalive."""
    return {
        "bus": {
            "type": "mqtt",
            "mqtt_url": broker.url,
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}/bus",
            "health_check_interval": 1.0,
            **bus,
        }
    }


def nats_config(server: NatsServer, **bus: Any) -> dict[str, Any]:
    """A NATS config for *server*, with a subject prefix of its own and quick health checks."""
    return {
        "bus": {
            "type": "nats",
            "nats_url": server.url,
            "subject_prefix": f"t{uuid.uuid4().hex[:8]}.bus",
            "health_check_interval": 0.5,
            **bus,
        }
    }


@pytest.fixture(scope="session")
def shared_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """One sentinel set for the tests that do not harm it (each uses its own key prefix)."""
    sentinels = SentinelSet(tmp_path_factory.mktemp("sentinels"))
    sentinels.start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A sentinel set of this test's own, which it may fail over and kill."""
    sentinels = SentinelSet(tmp_path)
    sentinels.start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


def sentinel_config(sentinels: SentinelSet, **bus: Any) -> dict[str, Any]:
    """A Redis config that finds the master through *sentinels*, with a key prefix of its own."""
    return {
        "bus": {
            "type": "redis",
            "redis_sentinels": sentinels.sentinel_addresses(),
            "redis_sentinel_master": MASTER_NAME,
            "prefix": f"t{uuid.uuid4().hex[:8]}:",
            "health_check_timeout": 1.0,
            **bus,
        }
    }


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """One Redis Cluster for the tests that do not harm it (each uses its own key prefix)."""
    cluster = ClusterSet(tmp_path_factory.mktemp("cluster"), node_timeout_ms=5000)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_set(tmp_path: Path) -> Iterator[ClusterSet]:
    """A Redis Cluster of this test's own, which it may fail over and kill."""
    cluster = ClusterSet(tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_config(cluster: ClusterSet, **bus: Any) -> dict[str, Any]:
    """A config on *cluster* (the fan-out, on sharded pub/sub, unless *bus* says), with its own key prefix."""
    fanout = {} if bus.get("delivery") == "queue" else {"health_check_interval": 0.5}
    return {
        "bus": {
            "type": "redis",
            "redis_cluster_nodes": cluster.addresses(),
            "prefix": f"t{uuid.uuid4().hex[:8]}:",
            "health_check_timeout": 1.0,
            **fanout,
            **bus,
        }
    }


@pytest.fixture(
    params=[
        *sorted(LOCAL_BACKENDS),
        "redis",
        "redis-queue",
        "redis-queue-sharded",
        "redis-sentinel",
        "redis-queue-sentinel",
        "redis-cluster",
        "redis-cluster-global",
        "redis-queue-cluster",
        "nats",
        "nats-queue",
        "mqtt",
        "mqtt-queue",
    ]
)
def backend_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The config of each backend the contract tests run against.

    The queue delivery runs them with ``max_deliveries: 1``: the contract's
    failing handler is not retried, as on the other backends.
    """
    server = request.getfixturevalue
    remote: dict[str, Callable[[], dict[str, Any]]] = {
        "redis": lambda: redis_config(server("redis_server")),
        "redis-queue": lambda: queue_config(server("redis_server"), max_deliveries=1),
        "redis-queue-sharded": lambda: queue_config(server("redis_server"), max_deliveries=1, shards=4),
        "redis-sentinel": lambda: sentinel_config(server("shared_sentinels"), health_check_interval=0.5),
        "redis-queue-sentinel": lambda: sentinel_config(
            server("shared_sentinels"),
            delivery="queue",
            claim_idle=1.0,
            retry_backoff=0.05,
            max_deliveries=1,
            min_replicas_ack=1,
        ),
        "redis-cluster": lambda: cluster_config(server("shared_cluster")),
        "redis-cluster-global": lambda: cluster_config(server("shared_cluster"), cluster_pubsub="global"),
        "redis-queue-cluster": lambda: cluster_config(
            server("shared_cluster"),
            delivery="queue",
            claim_idle=1.0,
            retry_backoff=0.05,
            max_deliveries=1,
            min_replicas_ack=1,
        ),
        "nats": lambda: nats_config(server("shared_nats")),
        "mqtt": lambda: mqtt_config(server("shared_mosquitto")),
        "mqtt-queue": lambda: mqtt_config(
            server("shared_mosquitto"), delivery="queue", retry_backoff=0.05, max_deliveries=1
        ),
        "nats-queue": lambda: nats_config(
            server("shared_nats"), delivery="queue", claim_idle=1.0, retry_backoff=0.05, max_deliveries=1
        ),
    }
    if request.param in remote:
        return remote[str(request.param)]()
    return LOCAL_BACKENDS[str(request.param)]


@pytest.fixture
def buses() -> Iterator[list[Bus]]:
    """The buses a test puts here are stopped at its end, each within 10 s."""
    made: list[Bus] = []
    yield made
    for bus in made:
        assert bus.stop(timeout=10), f"{bus!r} did not stop in time"


def build(buses: list[Bus], config: dict[str, Any]) -> Bus:
    """A bus of *config*, stopped at the test's end (put in the ``buses`` fixture's list)."""
    made = create_bus(config)
    buses.append(made)
    return made


@pytest.fixture
def make_bus(backend_config: dict[str, Any], buses: list[Bus]) -> BusFactory:
    """Build buses of the current backend, with config overrides; all are stopped at the end."""

    def factory(**overrides: dict[str, Any]) -> Bus:
        bus = create_bus(_merge(backend_config, overrides))
        buses.append(bus)
        return bus

    return factory
