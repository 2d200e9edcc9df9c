"""Load-balanced agents: several agent processes in one group share the messages, one answer each.

Needs a Redis; runs everything itself::

    python examples/load_balanced.py --redis-url redis://localhost:6379/0 --agents 3 --messages 300

It starts ``--agents`` agent processes (this file with ``--agent``) on the
queue delivery, sends ``--messages`` inbound messages from this gateway
process, and counts the replies: every message is answered once, and each
agent took a share. Kill an agent meanwhile and the others take over its
unfinished messages after ``claim_idle``.

With ``--shards 16`` each conversation stays in order across the agents:
the streams are split by session into 16 shards, each read by one agent at
a time, and the agents share the shards out among themselves (a new agent
gets its share within a second or two).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
import uuid

import redis

from nekobot_bus import Message, create_bus


def config(redis_url: str, prefix: str, group: str = "agents", shards: int = 0) -> dict[str, object]:
    return {
        "bus": {
            "type": "redis",
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "delivery": "queue",
            "group": group,
            "claim_idle": 5.0,
            "dedup_window": 600,
            "shards": shards,
        }
    }


def run_agent(redis_url: str, prefix: str, shards: int) -> int:
    bus = create_bus(config(redis_url, prefix, shards=shards))
    name = f"agent-{os.getpid()}"
    bus.register_inbound_handler(
        "console", lambda m: bus.send_outbound(m.reply(f"{name} answers {m.content}"))
    )
    with bus:
        print("ready", flush=True)
        sys.stdin.read()  # until the gateway closes our stdin
    return 0


def run_gateway(redis_url: str, prefix: str, agents: int, count: int, shards: int) -> int:
    agent_command = [sys.executable, __file__, "--agent", "--redis-url", redis_url, "--prefix", prefix]
    procs = [
        subprocess.Popen(
            [*agent_command, "--shards", str(shards)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(agents)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                print("an agent did not start", file=sys.stderr)
                return 1
        # The gateway reads replies in its own group: it must see all of them.
        gateway = create_bus(config(redis_url, prefix, group="gateway", shards=shards))
        replies: collections.Counter[str] = collections.Counter()
        answered: set[str] = set()
        done = threading.Event()
        lock = threading.Lock()

        def collect(message: Message) -> None:
            with lock:
                replies[message.content.split(" ")[0]] += 1
                answered.add(message.reply_to)
                if len(answered) == count:
                    done.set()

        gateway.register_outbound_handler("console", collect)
        with gateway:
            if shards:
                time.sleep(2.0)  # the agents share the shards out (a join takes a second or two)
            for n in range(count):
                gateway.send_inbound(
                    Message(channel_id="console", session_id=f"user-{n % 20}", content=str(n))
                )
            if not done.wait(60):
                print(f"only {len(answered)} of {count} messages were answered", file=sys.stderr)
                return 1
        total = sum(replies.values())
        print(f"{count} messages, {total} answers, each answered once: {total == count}")
        for agent, n in sorted(replies.items()):
            print(f"  {agent}: {n}")
        return 0 if total == count else 1
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)  # the example's streams and dedup keys
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--shards", type=int, default=0, help="split streams by session (0: no shards)")
    parser.add_argument("--prefix", default=f"nekobot-example:{uuid.uuid4().hex[:8]}:")
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        return run_agent(args.redis_url, args.prefix, args.shards)
    return run_gateway(args.redis_url, args.prefix, args.agents, args.messages, args.shards)


if __name__ == "__main__":
    raise SystemExit(main())
