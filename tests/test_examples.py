"""Each example in examples/, run the way README.rst tells a user to run it."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .agents import example_agent
from .redis_server import RedisServer, free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WAIT = 30.0


def example(name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_echo() -> None:
    done = example("console_echo.py", stdin="hello\nhow are you?\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "agent> echo: hello",
        "agent> echo: how are you?",
        "handled 2 messages",
    ]


def test_agent_and_console_as_two_processes_on_redis(redis_server: RedisServer) -> None:
    with example_agent(redis_server.url) as agent:
        done = example("redis_console.py", "--redis-url", redis_server.url, stdin="ping\npong\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "agent> agent heard 'ping' on console",
            "agent> agent heard 'pong' on console",
        ]
        out, _ = agent.communicate("", timeout=WAIT)
    assert agent.returncode == 0
    assert out.strip() == "agent answered 2 messages"


def test_the_asyncio_bot_asks_an_agent_process_over_redis(redis_server: RedisServer) -> None:
    with example_agent(redis_server.url):
        done = example("asyncio_bot.py", "--redis-url", redis_server.url, stdin="ping\npong\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "agent> agent heard 'ping' on asyncio-bot",
        "agent> agent heard 'pong' on asyncio-bot",
    ]


def test_the_asyncio_bot_says_when_no_agent_listens(redis_server: RedisServer) -> None:
    done = example("asyncio_bot.py", "--redis-url", redis_server.url, stdin="anyone?\n")
    assert done.returncode == 1
    assert "no agent is listening" in done.stderr


def test_the_console_says_when_no_agent_listens(redis_server: RedisServer) -> None:
    done = example("redis_console.py", "--redis-url", redis_server.url, stdin="anyone?\n")
    assert done.returncode == 1
    assert "no agent is listening" in done.stderr


def test_the_redis_examples_say_once_why_redis_could_not_be_reached() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    running = {  # all at once: each waits its send_timeout for Redis
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--redis-url", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("redis_agent.py", "redis_console.py", "asyncio_bot.py")
    }
    for name, process in running.items():
        _, err = process.communicate("", timeout=60)
        assert process.returncode == 3, (name, err)
        [line] = err.splitlines()
        assert line.startswith("error: Redis at redis://127.0.0.1:"), name
        assert "unreachable for 5.0 s while connecting" in line, name
        assert "Connection refused" in line, name


def request(port: int, method: str, path: str, body: object = None, *, form: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        data = form or (None if body is None else json.dumps(body))
        kind = "application/x-www-form-urlencoded" if form else "application/json"
        conn.request(method, path, data, {"Content-Type": kind})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_flask_webhook_gateway() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "flask_webhook.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                status, _ = request(port, "GET", "/bus/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "the example never served"
                time.sleep(0.1)
        assert status == 200
        for update_id, text in enumerate(["hello", "second"]):
            update = {
                "update_id": update_id,
                "message": {"chat": {"id": 42}, "from": {"id": 7}, "text": text},
            }
            assert request(port, "POST", "/telegram/webhook", update)[0] == 204
        assert request(port, "POST", "/telegram/webhook", {"update_id": 9})[0] == 400
        status, body = request(port, "POST", "/slack/command", form="user_id=U7&channel_id=C42&text=hi+there")
        assert status == 200
        assert json.loads(body) == {"response_type": "in_channel", "text": "echo: hi there"}
        deadline = time.monotonic() + WAIT
        while True:
            sent = json.loads(request(port, "GET", "/telegram/sent")[1])
            if len(sent) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sorted(s["text"] for s in sent) == ["echo: hello", "echo: second"]
        assert {s["chat_id"] for s in sent} == {"42"}
        assert {s["reply_to"] for s in sent} == {"telegram-0", "telegram-1"}
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=WAIT)
    assert "to chat 42: echo: hello" in out, err


@pytest.mark.parametrize("shards", ["0", "16"])
def test_load_balanced_agents(redis_server: RedisServer, shards: str) -> None:
    done = example(
        "load_balanced.py",
        "--redis-url",
        redis_server.url,
        "--agents",
        "3",
        "--messages",
        "300",
        "--shards",
        shards,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "300 messages, 300 answers, each answered once: True"
    shares = [int(line.rsplit(": ", 1)[1]) for line in lines[1:]]
    assert len(shares) == 3
    assert sum(shares) == 300
    assert all(share > 0 for share in shares)
