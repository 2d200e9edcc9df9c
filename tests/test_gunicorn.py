"""The Flask example under gunicorn with several workers on Redis: each reply is delivered once."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nekobot_bus import decode, encode

from .redis_server import RedisServer, free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
UPDATES = 200
CLIENTS = 8
WAIT = 60.0

pytestmark = pytest.mark.timeout(120)


def post(port: int, update_id: int) -> int:
    body = json.dumps(
        {"update_id": update_id, "message": {"chat": {"id": update_id % 17}, "text": f"update {update_id}"}}
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/telegram/webhook", body, {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def wait_until_serving(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, "gunicorn exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/telegram/sent")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("gunicorn did not serve within 30 s")


@pytest.fixture
def gunicorn(redis_server: RedisServer) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The README's deployment: 3 workers, 4 threads each, --preload, the example app on Redis."""
    port = free_port()
    env = dict(
        os.environ, NEKOBOT_BUS=json.dumps({"bus": {"type": "redis", "redis_addr": redis_server.addr}})
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "3",
            "--threads",
            "4",
            "--preload",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(EXAMPLES),
            "--graceful-timeout",
            "5",
            "flask_webhook:create_app(with_agent=False)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(port, server)
        yield port, server
    finally:
        if server.poll() is None:
            server.terminate()
        if server.stdout is not None and not server.stdout.closed:  # a test that failed half way
            try:
                server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()


def post_all(port: int) -> None:
    ids = iter(range(1, UPDATES + 1))
    lock = threading.Lock()
    statuses: list[int] = []

    def client() -> None:
        while True:
            with lock:
                update_id = next(ids, None)
            if update_id is None:
                return
            statuses.append(post(port, update_id))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert statuses.count(204) == UPDATES


def replies_delivered(server: subprocess.Popen[str]) -> Counter[str]:
    """Stop gunicorn (its workers drain their buses) and count the replies its workers printed."""
    server.terminate()
    out, _ = server.communicate(timeout=30)
    return Counter(re.findall(r"^to chat \d+: (.*)$", out, flags=re.MULTILINE))


def expected_replies(prefix: str) -> Counter[str]:
    return Counter({f"{prefix}update {n}": 1 for n in range(1, UPDATES + 1)})


def test_with_a_python_agent_each_reply_is_delivered_once(
    gunicorn: tuple[int, subprocess.Popen[str]], redis_server: RedisServer
) -> None:
    port, server = gunicorn
    agent = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "redis_agent.py"), "--redis-url", redis_server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "agent ready"
        post_all(port)
        wait_for_outbound(redis_server, UPDATES)
        delivered = replies_delivered(server)
    finally:
        agent.communicate("", timeout=30)
    assert delivered == Counter({f"agent heard 'update {n}' on telegram": 1 for n in range(1, UPDATES + 1)})


def test_with_a_go_style_agent_publishing_plain_json_each_reply_is_delivered_once(
    gunicorn: tuple[int, subprocess.Popen[str]], redis_server: RedisServer
) -> None:
    port, server = gunicorn
    stop = threading.Event()
    client: Any = redis_server.client()
    subscriber = redis_server.client().pubsub()
    subscriber.subscribe("nekobot:bus:inbound:telegram")

    def go_agent() -> None:  # what the Go agent does: PUBLISH the reply's JSON
        while not stop.is_set():
            item = subscriber.get_message(timeout=0.2)
            if item is not None and item["type"] == "message":
                message = decode(item["data"])
                client.publish(
                    "nekobot:bus:outbound:telegram", encode(message.reply(f"go: {message.content}"))
                )

    agent = threading.Thread(target=go_agent, name="go-agent")
    agent.start()
    try:
        post_all(port)
        wait_for_outbound(redis_server, UPDATES)
        delivered = replies_delivered(server)
    finally:
        stop.set()
        agent.join(5)
        subscriber.close()
        client.close()
    assert delivered == expected_replies("go: ")


def wait_for_outbound(server: RedisServer, count: int) -> None:
    """Wait until *count* replies were claimed by the group (each reply claims one key)."""
    client: Any = server.client()
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            claimed = len(client.keys("nekobot:bus:claim:*:outbound:*"))
            if claimed >= count:
                time.sleep(0.5)  # their handlers print
                return
            time.sleep(0.1)
        pytest.fail(f"only {claimed} of {count} replies were claimed")
    finally:
        client.close()
