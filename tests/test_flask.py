"""The Flask extension: the test client, a real threaded server under concurrent requests, the lifecycle."""

from __future__ import annotations

import http.client
import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from nekobot_bus import Message, encode
from nekobot_bus.flask import NekobotBus, start_in_background

from .conftest import redis_config
from .redis_server import RedisServer

WAIT = 10.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Gateway:
    """A webhook app: POSTed updates go inbound; an agent echoes; replies are collected."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.app = Flask("gateway")
        if config is not None:
            self.app.config["NEKOBOT_BUS"] = config
        self.ext = NekobotBus(self.app)
        self.app.register_blueprint(self.ext.blueprint(), url_prefix="/bus")
        self.seen: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()
        self.lock = threading.Condition()
        self.ext.bus.register_inbound_handler("telegram", self.agent)
        self.ext.bus.register_outbound_handler("telegram", self.deliver)
        self.app.add_url_rule("/webhook", "webhook", self.webhook, methods=["POST"])

    def agent(self, message: Message) -> None:
        with self.lock:
            self.seen[message.content] += 1
        self.ext.bus.send_outbound(message.reply(f"echo {message.content}"))

    def deliver(self, message: Message) -> None:
        with self.lock:
            self.replies[message.content] += 1
            self.lock.notify_all()

    def webhook(self) -> tuple[str, int]:
        update = request.get_json()
        self.ext.bus.send_inbound(
            Message(channel_id="telegram", session_id=str(update["chat"]), content=str(update["text"]))
        )
        return "", 204

    def wait_for_replies(self, count: int) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: sum(self.replies.values()) >= count, WAIT)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    made = Gateway()
    yield made
    assert made.ext.stop()


def bus_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("nekobot-bus")]


def test_the_bus_starts_on_the_first_request_and_only_once(gateway: Gateway) -> None:
    assert bus_threads() == []  # building the app (as a reloader's watcher does) starts nothing
    assert not gateway.ext.bus.running
    client = gateway.app.test_client()
    assert client.post("/webhook", json={"chat": 1, "text": "hi"}).status_code == 204
    deadline = time.monotonic() + WAIT
    while "nekobot-bus-starter" in bus_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gateway.ext.bus.health()["connected"]
    threads = bus_threads()
    assert "nekobot-bus-local-inbound-0" in threads
    assert client.post("/webhook", json={"chat": 1, "text": "again"}).status_code == 204
    assert sorted(bus_threads()) == sorted(threads)
    assert gateway.wait_for_replies(2)
    assert gateway.replies == Counter({"echo hi": 1, "echo again": 1})


def test_health_and_prometheus_metrics(gateway: Gateway) -> None:
    client = gateway.app.test_client()
    client.post("/webhook", json={"chat": 1, "text": "hi"})
    assert gateway.wait_for_replies(1)
    assert gateway.ext.bus.wait_idle(WAIT)
    health = client.get("/bus/health")
    assert health.status_code == 200
    assert health.json is not None
    assert (health.json["status"], health.json["backend"], health.json["running"]) == ("ok", "LocalBus", True)
    assert health.json["metrics"]["handled_in"] == 1
    metrics = client.get("/bus/metrics")
    assert metrics.status_code == 200
    assert metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'nekobot_bus_handled_total{direction="inbound"} 1.0' in text
    assert "# TYPE nekobot_bus_queue_depth gauge" in text
    gateway.ext.stop()
    assert client.get("/bus/health").status_code == 503


def test_metrics_are_json_without_prometheus_client(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    response = gateway.app.test_client().get("/bus/metrics")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["handled_in"] == 0


def test_a_redis_bus_reports_its_reader_in_health(redis_server: RedisServer) -> None:
    made = Gateway(redis_config(redis_server))
    try:
        client = made.app.test_client()
        client.post("/webhook", json={"chat": 5, "text": "over redis"})
        assert made.wait_for_replies(1)
        body = client.get("/bus/health").json
        assert body is not None
        assert (body["status"], body["backend"]) == ("ok", "RedisBus")
        assert body["health"]["connected"] is True
        redis_server.stop()
        assert made.ext.bus.stop(timeout=5)
        assert client.get("/bus/health").status_code == 503
    finally:
        made.ext.stop()


def test_concurrent_requests_on_a_real_threaded_server(gateway: Gateway) -> None:
    server = make_server("127.0.0.1", 0, gateway.app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-http-server")
    serving.start()
    clients, per_client = 8, 40
    failures: list[str] = []

    def post_updates(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
        try:
            for n in range(per_client):
                body = json.dumps({"chat": c, "text": f"{c}-{n}"})
                conn.request("POST", "/webhook", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 204:
                    failures.append(f"{c}-{n}: {response.status}")
        finally:
            conn.close()

    try:
        posters = [
            threading.Thread(target=post_updates, args=(c,), name=f"poster-{c}") for c in range(clients)
        ]
        for t in posters:
            t.start()
        for t in posters:
            t.join(WAIT * 3)
        assert gateway.wait_for_replies(clients * per_client)
        assert gateway.ext.bus.wait_idle(WAIT)
    finally:
        server.shutdown()
        serving.join(WAIT)
        server.server_close()
    assert failures == []
    expected = {f"{c}-{n}" for c in range(clients) for n in range(per_client)}
    assert set(gateway.seen) == expected
    assert set(gateway.seen.values()) == {1}, "an update reached the agent twice"
    assert gateway.replies == Counter({f"echo {text}": 1 for text in expected})
    metrics = gateway.ext.bus.get_metrics()
    assert (metrics["handled_in"], metrics["handled_out"], metrics["errors"]) == (320, 320, 0)


def test_a_bus_started_before_a_fork_is_refused_in_the_child(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.ext.start()
    real_pid = __import__("os").getpid()
    monkeypatch.setattr("os.getpid", lambda: real_pid + 1)
    with pytest.raises(RuntimeError, match="before it forked"):
        gateway.ext.start()
    monkeypatch.undo()


def test_the_views_are_mounted_only_where_the_app_asks() -> None:
    hidden = Flask("hidden")
    NekobotBus(hidden)
    assert hidden.test_client().get("/bus/health").status_code == 404
    by_config = Flask("by_config")
    by_config.config["NEKOBOT_BUS_URL_PREFIX"] = "/ops/bus"
    NekobotBus(by_config)
    assert by_config.test_client().get("/ops/bus/metrics").status_code == 200
    protected = Flask("protected")
    ext = NekobotBus(protected)
    views = ext.blueprint()
    views.before_request(lambda: None if request.headers.get("X-Token") == "s3cret" else ("no", 403))
    protected.register_blueprint(views, url_prefix="/internal")
    client = protected.test_client()
    assert client.get("/internal/health").status_code == 403
    allowed = client.get("/internal/health", headers={"X-Token": "s3cret"})
    assert allowed.json is not None
    assert allowed.json["backend"] == "LocalBus"
    for app in (hidden, by_config, protected):
        assert app.extensions["nekobot_bus"].stop()


def test_start_in_background_starts_the_bus_without_a_request(gateway: Gateway) -> None:
    start_in_background(gateway.app)
    deadline = time.monotonic() + WAIT
    while not gateway.ext.bus.running:
        assert time.monotonic() < deadline, "the bus did not start"
        time.sleep(0.01)
    while "nekobot-bus-starter" in bus_threads():
        assert time.monotonic() < deadline, "the starter did not end"
        time.sleep(0.01)
    threads = sorted(bus_threads())
    start_in_background(gateway.app)  # once per process: a second call starts nothing more
    time.sleep(0.1)
    assert sorted(bus_threads()) == threads
    gateway.ext.bus.send_inbound(Message(channel_id="telegram", content="no request yet"))
    assert gateway.wait_for_replies(1)
    with pytest.raises(RuntimeError, match="has no nekobot bus"):
        start_in_background(Flask("bare"))


def test_init_app_once_per_app_and_the_state_is_per_app() -> None:
    ext = NekobotBus()
    first, second = Flask("first"), Flask("second")
    second.config["NEKOBOT_BUS"] = {"bus": {"type": "local", "workers": 1}}
    ext.init_app(first)
    ext.init_app(second)
    with pytest.raises(RuntimeError, match="already has"):
        ext.init_app(first)
    with first.app_context():
        assert ext.bus.workers == 4
    with second.app_context():
        assert ext.bus.workers == 1
    with pytest.raises(RuntimeError, match="init_app"), Flask("third").app_context():
        ext.bus  # noqa: B018 - the property raises


def test_the_bus_is_drained_and_stopped_at_exit() -> None:
    script = """
import time
from flask import Flask
from nekobot_bus.flask import NekobotBus, start_in_background
from nekobot_bus import Message

app = Flask("exiting")
ext = NekobotBus(app)
def slow(message):
    time.sleep(0.5)
    print("handled", message.content, flush=True)
ext.bus.register_inbound_handler("telegram", slow)

@app.post("/in")
def receive():
    ext.bus.send_inbound(Message(channel_id="telegram", content="last words"))
    return "", 204

assert app.test_client().post("/in").status_code == 204
print("main done", flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main done", "handled last words"]


class Worker:
    """One worker process's app, as gunicorn would fork it: the bus delivers replies."""

    def __init__(self, config: dict[str, Any], group: object) -> None:
        self.app = Flask("gateway")
        self.app.config["NEKOBOT_BUS"] = config
        if group != "default":
            self.app.config["NEKOBOT_BUS_GROUP"] = group
        self.ext = NekobotBus(self.app)
        self.replies: Counter[str] = Counter()
        self.ext.bus.register_outbound_handler("telegram", lambda m: self.replies.update([m.content]))


@pytest.mark.parametrize(("group", "each_reply_delivered"), [("default", 1), (None, 2)])
def test_the_workers_of_one_app_deliver_each_reply_once_by_default(
    redis_server: RedisServer, group: str | None, each_reply_delivered: int
) -> None:
    workers = [Worker(redis_config(redis_server), group) for _ in range(2)]
    try:
        for worker in workers:
            worker.ext.start(worker.app)
        client = redis_server.client()
        for n in range(40):  # as the Go agent answers: a plain PUBLISH
            body = encode(Message(channel_id="telegram", content=f"reply {n}"))
            client.publish("nekobot:bus:outbound:telegram", body)
        client.close()
        expected = Counter({f"reply {n}": each_reply_delivered for n in range(40)})
        deadline = time.monotonic() + WAIT
        while (
            sum(sum(w.replies.values()) for w in workers) < expected.total() and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        for worker in workers:
            assert worker.ext.bus.wait_idle(WAIT)
        delivered: Counter[str] = Counter()
        for worker in workers:
            delivered.update(worker.replies)
        assert delivered == expected
    finally:
        for worker in workers:
            assert worker.ext.stop(worker.app)


def test_with_redis_away_requests_do_not_wait_and_the_bus_comes_up_by_itself(
    tmp_path: Path, buses: list[Any]
) -> None:
    server = RedisServer(tmp_path)  # not started yet
    config = redis_config(server, send_timeout=2.0, socket_connect_timeout=0.2)
    made = Gateway(config)
    client = made.app.test_client()
    try:
        started = time.monotonic()
        assert client.post("/webhook", json={"chat": 9, "text": "early"}).status_code == 204
        health = client.get("/bus/health")
        assert time.monotonic() - started < 1.0, "a request waited for the bus to start"
        assert health.status_code == 503
        time.sleep(2.5)  # one failed start: past send_timeout
        health = client.get("/bus/health")
        assert health.status_code == 503
        assert health.json is not None
        assert "unreachable" in str(health.json["reason"])
        server.start()
        assert made.wait_for_replies(1), "the message sent while Redis was away never got its reply"
        assert made.replies == Counter({"echo early": 1})
        assert client.get("/bus/health").status_code == 200
    finally:
        assert made.ext.stop()
        server.stop()


def test_a_webhook_fails_fast_once_redis_has_been_gone_for_send_timeout(redis_server: RedisServer) -> None:
    """The example app, started, loses Redis: health says so at once, and webhooks answer 503 at once."""
    spec = importlib.util.spec_from_file_location("flask_webhook", EXAMPLES / "flask_webhook.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    app = example.create_app(redis_config(redis_server, send_timeout=1.0, socket_connect_timeout=0.2))
    client = app.test_client()
    update = {"update_id": 1, "message": {"chat": {"id": 1}, "text": "hi"}}
    try:
        app.extensions["nekobot_bus"].start_now()
        assert client.post("/telegram/webhook", json=update).status_code == 204
        redis_server.stop()
        time.sleep(1.2)  # the outage is older than send_timeout
        for ask in (lambda: client.get("/bus/health"), lambda: client.post("/telegram/webhook", json=update)):
            started = time.monotonic()
            response = ask()
            assert time.monotonic() - started < 0.5, f"{response.request.path} waited for Redis"
            assert response.status_code == 503, (response.request.path, response.status_code)
    finally:
        assert app.extensions["nekobot_bus"].stop()
