"""The nekobot-bus command, run as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nekobot_bus import Message, codec

from .redis_server import RedisServer

TIMEOUT = 60
COMMAND = "from nekobot_bus.cli import main; raise SystemExit(main())"
# Makes 'import redis' fail, as on an install without the redis extra.
WITHOUT_REDIS = "import sys; sys.modules['redis'] = None; " + COMMAND


def run(*args: str, stdin: str = "", code: str = COMMAND) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@contextlib.contextmanager
def tailing(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``nekobot-bus tail *args`` in the background; killed if it still runs at the end."""
    tail = subprocess.Popen(
        [sys.executable, "-c", COMMAND, "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield tail
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()


def finish(tail: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for *tail* to exit by itself (``--count``), successfully; return its output and errors."""
    out, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    return out, err


def wait_for_listeners(server: RedisServer, channel: str | None = None) -> None:
    """Wait until tail listens: a pattern subscription, or one to *channel*."""
    client: Any = server.client()
    deadline = time.monotonic() + 10
    while (
        client.execute_command("PUBSUB", "NUMPAT")
        if channel is None
        else client.execute_command("PUBSUB", "NUMSUB", channel)[1]
    ) < 1:
        assert time.monotonic() < deadline, "tail never subscribed"
        time.sleep(0.05)


def test_demo_echoes_each_line_through_the_bus() -> None:
    done = run("demo", stdin="hello\nwie geht's?\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: hello", "echo: wie geht's?"]


def test_demo_and_help_work_without_the_redis_extra() -> None:
    done = run("demo", stdin="offline\n", code=WITHOUT_REDIS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: offline"]
    assert run("--help", code=WITHOUT_REDIS).returncode == 0


def test_demo_runs_on_redis_with_config(redis_server: RedisServer) -> None:
    config = json.dumps({"bus": {"type": "redis", "redis_addr": redis_server.addr}})
    done = run("demo", "--config", config, stdin="over redis\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: over redis"]


def test_demo_with_a_bad_config_says_what_is_wrong() -> None:
    done = run("demo", "--config", '{"bus": {"type": "kafka"}}')
    assert done.returncode == 2
    assert "bus.type 'kafka' is not a known backend" in done.stderr


def test_help_lists_the_commands_and_exit_codes() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("bench", "tail", "send", "demo", "exit status"):
        assert command in done.stdout
    for command in ("bench", "tail", "send", "demo"):
        assert "example" in run(command, "--help").stdout


def test_tail_shows_what_send_publishes_and_garbage_as_such(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    with tailing("--redis-url", url, "--json", "--count", "3", "--timeout", "30") as tail:
        wait_for_listeners(redis_server)
        sent = run(
            "send", "--redis-url", url, "--channel", "telegram", "--session", "chat:1", "--content", "hi"
        )
        assert sent.returncode == 0, sent.stderr
        reply = Message(channel_id="discord", session_id="d:1", content="from a file", reply_to="x1")
        path = tmp_path / "reply.json"
        path.write_bytes(codec.encode(reply))
        assert run("send", "--redis-url", url, "--outbound", "--file", str(path)).returncode == 0
        redis_server.client().publish("nekobot:bus:inbound:slack", b"\x80 not json")
        out, _ = finish(tail)
    first, second, third = (json.loads(line) for line in out.splitlines())
    assert (first["direction"], first["channel"]) == ("inbound", "telegram")
    assert first["message"]["id"] == sent.stdout.strip()
    assert (first["message"]["content"], first["message"]["session_id"]) == ("hi", "chat:1")
    assert (second["direction"], second["message"]["id"], second["message"]["reply_to"]) == (
        "outbound",
        reply.id,
        "x1",
    )
    assert (third["channel"], third["bytes"]) == ("slack", 10)
    assert "not JSON" in third["error"]


def test_tail_keeps_watching_across_a_redis_restart(redis_server: RedisServer) -> None:
    url = redis_server.url
    with tailing("--redis-url", url, "--count", "2", "--timeout", "30") as tail:
        wait_for_listeners(redis_server)
        assert run("send", "--redis-url", url, "--channel", "telegram", "--content", "before").returncode == 0
        redis_server.restart()  # SIGKILL, then the same port
        wait_for_listeners(redis_server)
        assert run("send", "--redis-url", url, "--channel", "telegram", "--content", "after").returncode == 0
        out, err = finish(tail)
    assert [line.rsplit(": ", 1)[1] for line in out.splitlines()] == ["before", "after"]
    assert "lost Redis at" in err
    assert "reconnected" in err


def test_tail_filters_by_direction_and_channel_in_text(redis_server: RedisServer) -> None:
    url = redis_server.url
    with tailing(
        "--redis-url", url, "--outbound", "--channel", "discord", "--count", "1", "--timeout", "30"
    ) as tail:
        wait_for_listeners(redis_server, "nekobot:bus:outbound:discord")
        for args in (["--channel", "discord"], ["--outbound", "--channel", "telegram"]):
            run("send", "--redis-url", url, *args, "--content", "filtered out")
        assert run("send", "--redis-url", url, "--outbound", "--channel", "discord", "--username", "bot",
                   "--content", "shown").returncode == 0  # fmt: skip
        out, _ = finish(tail)
    [line] = out.splitlines()
    assert "outbound" in line
    assert "discord" in line
    assert "bot: shown" in line


def test_tail_reads_the_queue_delivery_without_taking_anything(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "bus.json"
    config.write_text(
        json.dumps({"bus": {"type": "redis", "redis_addr": redis_server.addr, "delivery": "queue"}})
    )
    with tailing("--config", str(config), "--json", "--count", "1", "--timeout", "30") as tail:
        time.sleep(1.0)  # tail lists the streams every 0.5 s; a new one is read from its start
        sent = run("send", "--config", str(config), "--channel", "telegram", "--content", "queued")
        assert sent.returncode == 0, sent.stderr
        out, _ = finish(tail)
    assert json.loads(out)["message"]["content"] == "queued"
    client: Any = redis_server.client()
    assert client.xlen("nekobot:bus:inbound:telegram") == 1  # still there for the agents


def test_tail_with_a_channel_sees_a_sharded_queue_bus(redis_server: RedisServer, tmp_path: Path) -> None:
    bus = {"type": "redis", "redis_addr": redis_server.addr, "delivery": "queue", "shards": 4}
    config = tmp_path / "bus.json"
    config.write_text(json.dumps({"bus": bus}))
    args = ("--config", str(config), "--channel", "telegram", "--json", "--count", "3", "--timeout", "30")
    with tailing(*args) as tail:
        time.sleep(1.0)
        for session in ("a", "b", "c"):  # three sessions: more than one shard
            sent = run(
                "send",
                "--config",
                str(config),
                "--channel",
                "telegram",
                "--session",
                session,
                "--content",
                session,
            )
            assert sent.returncode == 0, sent.stderr
        out, _ = finish(tail)
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["message"]["content"] for line in lines) == ["a", "b", "c"]
    assert {line["channel"] for line in lines} == {"telegram"}
    client: Any = redis_server.client()
    assert len(client.keys("nekobot:bus:inbound:telegram[[]*")) > 1
    client.close()


def test_send_to_nobody_warns_and_exits_1(redis_server: RedisServer) -> None:
    done = run("send", "--redis-url", redis_server.url, "--channel", "telegram", "--content", "anyone?")
    assert done.returncode == 1
    assert "no process was subscribed" in done.stderr
    assert len(done.stdout.strip()) == 32  # the message id is printed all the same


def test_unreachable_redis_exits_3_naming_the_address_not_the_password() -> None:
    for command in (["send", "--channel", "telegram"], ["tail"]):
        done = run(*command, "--redis-url", "redis://:hunter2@127.0.0.1:1/0")
        assert done.returncode == 3, done.stderr
        assert "127.0.0.1:1" in done.stderr
        assert "hunter2" not in done.stderr


def test_send_rejects_bad_input_with_exit_2(redis_server: RedisServer) -> None:
    url = redis_server.url
    cases = [
        (["--channel", "bad channel"], "channel id"),
        (["--channel", "t", "--type", "hologram"], "hologram"),
        (["--channel", "t", "--data", "[1]"], "--data must be a JSON object"),
        ([], "--channel is required"),
    ]
    for args, complaint in cases:
        done = run("send", "--redis-url", url, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert complaint in done.stderr
    local = run("send", "--config", '{"bus": {"type": "local"}}', "--channel", "t")
    assert local.returncode == 2
    assert "needs a Redis bus" in local.stderr


def test_bench_local_json_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "bench.png"
    done = run(
        "bench", "--backend", "local", "--backend", "local-inline", "--count", "300", "--rounds", "1",
        "--scaling", "--json", "--plot", str(plot), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = [r["name"] for r in report["results"]]
    assert "LocalBus threaded" in names
    assert "queue.Queue hand-off (baseline)" in names
    assert "blinker signal.send (alternative)" in names
    threaded = report["results"][names.index("LocalBus threaded")]
    assert threaded["p50_us"] > 0
    assert threaded["rate_per_s"] > 0
    assert threaded["claim"] == "~1 us"
    assert {t["target"] for t in report["targets"]} >= {"threaded p50 latency / queue.Queue p50"}
    workers = [row for row in report["scaling"] if row["series"] == "workers"]
    assert [row["workers"] for row in workers] == [1, 4, 16]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_names_an_unreachable_redis_and_how_to_start_one() -> None:
    done = run("bench", "--backend", "redis", "--redis-url", "redis://127.0.0.1:1/0", "--no-progress")
    assert done.returncode == 3
    assert "redis://127.0.0.1:1/0 does not answer" in done.stderr
    assert "redis-server" in done.stderr
