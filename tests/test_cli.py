"""The nekobot-bus command, run as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats

from nekobot_bus import Message, codec
from nekobot_bus.cli._terminal import json_line

from .mosquitto_broker import MosquittoBroker
from .nats_server import NatsServer
from .redis_cluster import ClusterSet
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


def small_bench(*args: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``bench`` with *args*, 200 messages, one round, as JSON: the report and its lines by name."""
    done = run("bench", *args, "--count", "200", "--rounds", "1", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return report, {r["name"]: r for r in report["results"]}


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
    assert {t["target"] for t in report["targets"]} >= {
        "threaded p50 latency / queue.Queue p50",
        "LocalBus request p50 / the round trip by hand p50",
    }
    for name in ("LocalBus request", "LocalBus round trip by hand (baseline)", "AsyncBus request (local)"):
        assert report["results"][names.index(name)]["p50_us"] > 0
    assert re.search(
        r"p50 \d+\.\dx the threaded", report["results"][names.index("AsyncBus request (local)")]["note"]
    )
    workers = [row for row in report["scaling"] if row["series"] == "workers"]
    assert [row["workers"] for row in workers] == [1, 4, 16]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_measures_redis_requests_beside_the_round_trip_by_hand(redis_server: RedisServer) -> None:
    report, by_name = small_bench("--backend", "redis", "--redis-url", redis_server.url)
    assert by_name["RedisBus request"]["p50_us"] > 0
    assert by_name["RedisBus round trip by hand (baseline)"]["p50_us"] > 0
    [target] = [t for t in report["targets"] if t["target"].startswith("RedisBus request p50")]
    assert target["measured"] > 0
    assert "LocalBus request" not in by_name, "only the backends asked for"


def test_bench_names_an_unreachable_redis_and_how_to_start_one() -> None:
    done = run("bench", "--backend", "redis", "--redis-url", "redis://127.0.0.1:1/0", "--no-progress")
    assert done.returncode == 3
    assert "redis://127.0.0.1:1/0 does not answer" in done.stderr
    assert "redis-server" in done.stderr


HOSTILE = "\x1b[2J\x1b[31mHACKED\x1b]0;owned\x07\r\nforged line\x9b31m\u202eevil\x7f"


def test_tail_shows_what_chat_users_wrote_as_visible_escapes(redis_server: RedisServer) -> None:
    hostile = Message(channel_id="telegram", session_id="s\x1b[1m", username="ann\r\x1b[2K", content=HOSTILE)
    long = Message(channel_id="telegram", content="x" * 100_000)
    with (
        tailing("--redis-url", redis_server.url, "--count", "2") as text,
        tailing("--redis-url", redis_server.url, "--count", "2", "--json") as as_json,
    ):
        client: Any = redis_server.client()
        deadline = time.monotonic() + 10
        while sum(int(c["psub"]) > 0 for c in client.client_list()) < 2:  # NUMPAT counts patterns, not tails
            assert time.monotonic() < deadline, "tail never subscribed"
            time.sleep(0.05)
        client.publish("nekobot:bus:inbound:telegram", codec.encode(hostile))
        client.publish("nekobot:bus:inbound:telegram", codec.encode(long))
        client.close()
        out, _ = finish(text)
        json_out, _ = finish(as_json)
    lines = out.splitlines()
    assert len(lines) == 2, "a chat user's \\r or \\n made a line of tail's own"
    unsafe = [c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"]
    assert unsafe == [], f"control characters reached the terminal: {unsafe!r}"
    assert "\\x1b[2J\\x1b[31mHACKED" in lines[0]
    assert "ann\\r\\x1b[2K" in lines[0]
    assert "\\u202eevil" in lines[0]
    assert lines[1].endswith("… [99700 more characters]"), lines[1][-60:]
    assert not [c for c in json_out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    ascii_only = Message(channel_id="telegram", content="rub\x7fout")
    assert "\x7f" not in json_line({"content": ascii_only.content})
    first, second = (json.loads(line) for line in json_out.splitlines())
    assert first["message"]["content"] == HOSTILE  # --json keeps every character, escaped
    assert len(second["message"]["content"]) == 100_000


def test_tail_into_a_closed_pipe_ends_quietly(redis_server: RedisServer) -> None:
    reader, writer = os.pipe()
    tail = subprocess.Popen(
        [sys.executable, "-c", COMMAND, "tail", "--redis-url", redis_server.url],
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(writer)
    try:
        wait_for_listeners(redis_server)
        with os.fdopen(reader, "rb") as head:  # what `head -1` does: read a line, then go away
            client: Any = redis_server.client()
            client.publish("nekobot:bus:inbound:telegram", codec.encode(Message(channel_id="telegram")))
            assert head.readline()
        for _ in range(50):  # until tail writes into the closed pipe
            client.publish("nekobot:bus:inbound:telegram", codec.encode(Message(channel_id="telegram")))
            if tail.poll() is not None:
                break
            time.sleep(0.1)
        client.close()
        _, err = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    assert err == ""


def test_bad_addresses_exit_2_with_one_line_and_no_traceback() -> None:
    cases = [
        (["--redis-url", "localhost:6379"], "--redis-url must be a URL"),
        (["--redis-url", "http://localhost:6379/0"], "must start with one of redis://"),
        (["--redis-url", "redis://localhost:99999/0"], "the port must be a number from 1 to 65535"),
        (["--redis-url", "redis://localhost:6379/x"], "the database in the URL path must be a number"),
        (["--config", '{"bus": {"type": "redis", "redis_addr": "redis://localhost:6379"}}'], "not a URL"),
        (["--config", '{"bus": {"type": "redis", "redis_addr": "localhost:port"}}'], "bus.redis_addr"),
        (["--config", '{"type": "redis", "redis_addr": "localhost:6379"}'], "belong under 'bus'"),
        (["--config", '{"buss": {"type": "redis"}}'], "did you mean 'bus'"),
    ]
    for args, complaint in cases:
        for command in (["tail"], ["send", "--channel", "t"]):
            done = run(*command, *args)
            assert done.returncode == 2, (args, done.stderr)
            assert complaint in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_wrong_password_and_a_missing_database_say_so(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right")
    server.start()
    try:
        host = f"127.0.0.1:{server.port}"
        wrong = run("tail", "--redis-url", f"redis://:wrong@{host}/0")
        missing = run("tail", "--redis-url", f"redis://{host}/0")
        database = run("tail", "--redis-url", f"redis://:right@{host}/99")
    finally:
        server.stop()
    for done in (wrong, missing):
        assert done.returncode == 3, done.stderr
        assert "authentication failed" in done.stderr
        assert "wrong" not in done.stderr.replace("authentication", "")
    assert database.returncode == 2, database.stderr
    assert "has no database 99" in database.stderr
    assert "right" not in database.stderr


def test_the_hint_names_the_port_given() -> None:
    done = run("tail", "--redis-url", "redis://127.0.0.1:1/0")
    assert done.returncode == 3
    assert "redis-server --port 1 " in done.stderr


def test_without_the_redis_extra_send_tail_and_bench_name_the_extra() -> None:
    for command in (
        ["send", "--redis-url", "redis://localhost:6379/0", "--channel", "t"],
        ["tail", "--redis-url", "redis://localhost:6379/0"],
        ["bench", "--backend", "redis", "--no-progress"],
    ):
        done = run(*command, code=WITHOUT_REDIS)
        assert done.returncode == 2, (command, done.stderr)
        assert "pip install 'nekobot_bus[redis]'" in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_no_password_in_bench_output() -> None:
    done = run(
        "bench", "--backend", "local", "--backend", "redis", "--count", "200", "--rounds", "1",
        "--json", "--no-progress", "--redis-url", "redis://:secretpw@127.0.0.1:1/0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "secretpw" not in done.stdout + done.stderr
    assert json.loads(done.stdout)["options"]["redis_url"] == "redis://127.0.0.1:1/0"


def test_send_file_refuses_message_flags_and_stamps_a_missing_timestamp(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "message.json"
    path.write_text('{"channel_id": "telegram", "content": "from a file"}')
    mixed = run("send", "--redis-url", redis_server.url, "--file", str(path), "--channel", "other")
    assert mixed.returncode == 2
    assert "--channel cannot be used with it" in mixed.stderr
    with tailing("--redis-url", redis_server.url, "--count", "1", "--json") as tail:
        wait_for_listeners(redis_server)
        sent = run("send", "--redis-url", redis_server.url, "--file", str(path))
        out, _ = finish(tail)
    assert sent.returncode == 0, sent.stderr
    stamp = json.loads(out)["message"]["timestamp"]
    assert not stamp.startswith("0001-"), stamp


def test_usage_errors_belong_to_the_command_and_verbose_goes_anywhere() -> None:
    unknown = run("send", "--redis-url", "redis://localhost:6379/0", "--bogus")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("usage: nekobot-bus send")
    assert "unrecognized arguments: --bogus" in unknown.stderr
    negative = run("demo", "--timeout", "-1")
    assert negative.returncode == 2
    assert "above 0" in negative.stderr
    verbose = run("demo", "-v", stdin="hi\n")
    assert verbose.returncode == 0, verbose.stderr
    assert "create_bus built <LocalBus" in verbose.stderr
    helped = run("tail", "--help")
    assert "only the agent's replies (default: both directions)" in helped.stdout


def test_bench_reports_what_redis_cut_instead_of_stalling(tmp_path: Path) -> None:
    """Redis cuts a subscriber; the table says so and how many were lost, and the run goes on.

    Large payloads at a 64 kB output-buffer limit cut ``RedisBus``, whose
    decoding cannot keep pace with Redis. The bare redis-py subscriber
    sometimes can, so the test cuts it by ``CLIENT KILL`` once it subscribes.
    """
    server = RedisServer(tmp_path, "--client-output-buffer-limit", "pubsub 64kb 0 0")
    server.start()
    watcher: Any = server.client()
    finished = threading.Event()

    def cut_the_bare_subscriber() -> None:
        while not finished.wait(0.005):
            if watcher.pubsub_numsub("nekobot-bench:bare-batch")[0][1]:
                watcher.client_kill_filter(_type="pubsub")
                return

    cutter = threading.Thread(target=cut_the_bare_subscriber)
    cutter.start()
    try:
        done = run(
            "bench", "--backend", "redis", "--redis-url", server.url, "--payload-size", "50000",
            "--count", "200", "--rounds", "1", "--json", "--no-progress",
        )  # fmt: skip
        left = [k for k in watcher.keys("*") if k.startswith(b"_kombu") or k.startswith(b"nekobot-bench")]
    finally:
        finished.set()
        cutter.join()
        watcher.close()
        server.stop()
    assert done.returncode == 0, done.stderr
    notes = {r["name"]: r["note"] for r in json.loads(done.stdout)["results"]}
    bare = notes["redis-py pipelined publish/subscribe (baseline)"]
    assert re.search(r"^lost \d+ of \d+: Redis cut the subscriber", bare), bare
    ours = notes["RedisBus fan-out, send_many"]
    assert re.search(r"^lost \d+ of \d+: the subscriber was cut \d+ time", ours), ours
    assert left == [], "the benchmark left keys in the user's Redis"


def test_bench_measures_nats_beside_bare_nats_py(shared_nats: NatsServer) -> None:
    report, lines = small_bench("--backend", "nats", "--nats-url", shared_nats.url)
    assert lines["nats-py publish/subscribe (baseline)"]["p50_us"] > 0
    assert lines["NatsBus fan-out"]["p50_us"] > 0
    assert lines["NatsBus fan-out"]["rate_per_s"] > 0
    assert [t["target"] for t in report["targets"]] == ["NATS fan-out p50 / bare nats-py pub/sub p50"]


def test_bench_measures_the_jetstream_queue_and_leaves_no_stream(shared_nats: NatsServer) -> None:
    report, lines = small_bench("--backend", "nats-queue", "--nats-url", shared_nats.url)
    assert lines["NatsQueueBus JetStream queue"]["p50_us"] > 0
    assert lines["NatsQueueBus queue, send_many"]["rate_per_s"] > 0
    assert [t["target"] for t in report["targets"]] == ["NATS JetStream queue p50 / NATS fan-out p50"]

    async def streams() -> list[str]:
        client = await nats.connect(shared_nats.url)
        try:
            return [info.config.name or "" for info in await client.jetstream().streams_info()]
        finally:
            await client.close()

    assert not [name for name in asyncio.run(streams()) if name.startswith("nekobot-bench")]


def test_bench_measures_mqtt_beside_bare_paho(shared_mosquitto: MosquittoBroker) -> None:
    report, lines = small_bench(
        "--backend", "mqtt", "--backend", "mqtt-queue", "--mqtt-url", shared_mosquitto.url
    )
    assert lines["paho-mqtt publish/subscribe (baseline)"]["p50_us"] > 0
    assert lines["MqttBus fan-out"]["p50_us"] > 0
    assert lines["MqttBus fan-out"]["rate_per_s"] > 0
    assert lines["MqttBus fan-out"]["note"] == "", "the rate runs lost messages"
    assert lines["MqttQueueBus shared subscription"]["p50_us"] > 0
    assert [t["target"] for t in report["targets"]] == [
        "MQTT fan-out p50 / bare paho-mqtt pub/sub p50",
        "MQTT shared-subscription queue p50 / MQTT fan-out p50",
    ]


def test_bench_measures_a_cluster_beside_one_redis(
    shared_cluster: ClusterSet, redis_server: RedisServer
) -> None:
    nodes = ",".join(shared_cluster.addresses())
    report, lines = small_bench(
        "--backend", "redis-cluster", "--redis-url", redis_server.url, "--redis-cluster-nodes", nodes
    )
    for name in (
        "RedisBus on one Redis (beside the cluster)",
        "RedisBus on a Redis Cluster, sharded pub/sub",
    ):
        assert lines[name]["p50_us"] > 0
        assert lines[name]["rate_per_s"] > 0
    assert [t["target"] for t in report["targets"]] == [
        "Redis Cluster fan-out p50 / one Redis fan-out p50",
        "Redis Cluster send_many rate / one Redis send_many rate",
    ]


def test_bench_says_which_cluster_does_not_answer(redis_server: RedisServer) -> None:
    done = run(
        "bench",
        "--backend",
        "redis-cluster",
        "--redis-url",
        redis_server.url,
        "--redis-cluster-nodes",
        "127.0.0.1:1",
    )
    assert done.returncode == 3
    assert "the Redis Cluster lines are left out" in done.stderr


def test_demo_into_a_closed_pipe_ends_quietly() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-c", COMMAND, "demo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert demo.stdin is not None
    assert demo.stdout is not None
    demo.stdin.write(b"hello\n" * 200)
    demo.stdin.close()
    assert demo.stdout.readline() == b"echo: hello\n"
    demo.stdout.close()  # what `head -1` does
    started = time.monotonic()
    assert demo.wait(30) == 0
    assert time.monotonic() - started < 3.0, "demo waited for a reply it could not print"
    assert demo.stderr is not None
    assert demo.stderr.read() == b""
    demo.stderr.close()


def test_a_wrong_password_and_a_missing_database_fail_at_once_when_a_bus_starts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right")
    server.start()
    try:
        host = f"127.0.0.1:{server.port}"
        for url, status, says in (
            (f"redis://:wrong@{host}/0", 3, "authentication failed"),
            (f"redis://:right@{host}/99", 2, "DB index is out of range"),
        ):
            config = json.dumps({"bus": {"type": "redis", "redis_url": url}})
            started = time.monotonic()
            done = run("demo", "--config", config, stdin="hi\n")
            assert time.monotonic() - started < 4.0, "the start waited send_timeout for a refusal"
            assert done.returncode == status, done.stderr
            assert says in done.stderr
            assert "wrong" not in done.stderr.replace("authentication", "")
    finally:
        server.stop()
