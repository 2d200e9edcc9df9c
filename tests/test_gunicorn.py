"""The Flask example under gunicorn with several workers on Redis: each reply is delivered once."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nekobot_bus import Message, decode, encode

from .agents import example_agent
from .redis_server import RedisServer, free_port

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"
OUTBOUND = "nekobot:bus:outbound:telegram"
WORKERS = 3
UPDATES = 200
CLIENTS = 8
WAIT = 60.0

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")


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


def workers_of(server: subprocess.Popen[str]) -> list[int]:
    """The process ids of gunicorn's workers: the children of its master."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == server.pid:
            children.append(int(stat.parent.name))
    return children


def wait_until_every_worker_listens(server: subprocess.Popen[str], redis: RedisServer, port: int) -> None:
    """Until gunicorn accepts connections and each worker's bus subscribed, with no request made."""
    client: Any = redis.client()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                out = server.stdout.read() if server.stdout is not None else ""
                pytest.fail(f"gunicorn exited with {server.returncode}:\n{out}")
            [(_, listening)] = client.pubsub_numsub(OUTBOUND)
            if listening == WORKERS:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            time.sleep(0.1)
        pytest.fail(f"{listening} of {WORKERS} workers subscribed within 30 s")
    finally:
        client.close()


@contextlib.contextmanager
def gunicorn_serving(
    redis: RedisServer, app: str, *extra: str
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """gunicorn with the example's config file: WORKERS workers, 4 threads each, --preload."""
    port = free_port()
    env = dict(os.environ, NEKOBOT_BUS=json.dumps({"bus": {"type": "redis", "redis_addr": redis.addr}}))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(EXAMPLES / "gunicorn.conf.py"),
            "-w",
            str(WORKERS),
            "--threads",
            "4",
            "--preload",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(EXAMPLES),
            "--graceful-timeout",
            "5",
            *extra,
            app,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_every_worker_listens(server, redis, port)
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


@pytest.fixture
def gunicorn(redis_server: RedisServer) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The README's deployment of the example app on Redis."""
    with gunicorn_serving(redis_server, "flask_webhook:create_app(with_agent=False)") as served:
        yield served


def from_clients(numbers: range, call: Callable[[int], T]) -> dict[int, T]:
    """``call(n)`` for each of *numbers*, from CLIENTS threads at once: each result by its number."""
    pending = iter(numbers)
    lock = threading.Lock()
    results: dict[int, T] = {}

    def client() -> None:
        while True:
            with lock:
                n = next(pending, None)
            if n is None:
                return
            results[n] = call(n)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return results


def post_all(port: int) -> None:
    statuses = from_clients(range(1, UPDATES + 1), lambda update_id: post(port, update_id))
    assert list(statuses.values()).count(204) == UPDATES


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
    with example_agent(redis_server.url):
        post_all(port)
        wait_for_outbound(redis_server, UPDATES)
        delivered = replies_delivered(server)
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


def test_a_killed_worker_loses_only_the_replies_it_had_claimed(redis_server: RedisServer) -> None:
    """At most once per group: what a worker took and did not deliver before dying is lost, nothing else."""
    replies = 300
    with gunicorn_serving(redis_server, "slow_gateway:create_app()", "--pythonpath", str(TESTS)) as (
        _,
        server,
    ):
        client: Any = redis_server.client()
        try:
            pipe = client.pipeline(transaction=False)
            for n in range(replies):  # as the Go agent answers: plain PUBLISH
                pipe.publish(
                    OUTBOUND, encode(Message(id=f"reply-{n}", channel_id="telegram", session_id=f"chat-{n}"))
                )
            pipe.execute()
            time.sleep(1.0)  # every worker is delivering: 300 x 100 ms take 2.5 s on 3 x 4 threads
            victim = workers_of(server)[0]
            os.kill(victim, signal.SIGKILL)
            claims = wait_for_claims(client, replies)
            server.terminate()  # the survivors drain what they claimed
            out, _ = server.communicate(timeout=30)
        finally:
            client.close()
    delivered = Counter(re.findall(r"^delivered (reply-\d+) by \d+$", out, flags=re.MULTILINE))
    assert [i for i, times in delivered.items() if times > 1] == [], "a reply was delivered twice"
    missing = {f"reply-{n}" for n in range(replies)} - set(delivered)
    assert missing, "the kill landed after the victim had delivered everything it claimed"
    owners = {claims[i] for i in missing}
    assert all(f"-{victim}-" in owner for owner in owners), f"{victim} killed; lost: {owners}\n{out}"
    assert len(missing) <= 4, "the victim lost more than its 4 handler threads held"


def wait_for_claims(client: Any, count: int) -> dict[str, str]:
    """The claim of each of *count* replies, by message id: which member took it."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        keys = client.keys("nekobot:bus:claim:*:outbound:*")
        if len(keys) >= count:
            owners = client.mget(keys)
            return {k.decode().rsplit(":", 1)[1]: v.decode() for k, v in zip(keys, owners, strict=True)}
        time.sleep(0.1)
    pytest.fail(f"only {len(keys)} of {count} replies were claimed")


def slash_command(port: int, n: int) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = f"user_id=U{n}&channel_id=C{n % 5}&text=command+{n}"
        conn.request("POST", "/slack/command", body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_slash_commands_answer_each_in_its_own_response_across_workers(
    gunicorn: tuple[int, subprocess.Popen[str]], redis_server: RedisServer
) -> None:
    """bus.request in whichever worker took the HTTP request gets the agent's reply to it, and no other."""
    port, server = gunicorn
    with example_agent(redis_server.url):
        answers = from_clients(range(60), lambda n: slash_command(port, n))
        replies_delivered(server)
    assert answers == {
        n: (200, {"response_type": "in_channel", "text": f"agent heard 'command {n}' on slack"})
        for n in range(60)
    }
