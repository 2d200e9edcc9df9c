"""An agent process of the queue-delivery tests.

``python -m tests.queue_agent ADDR PREFIX LOG [--delay S] [--dedup S] [--channels A,B]``
joins group ``agents`` of the queue delivery on Redis (ADDR ``host:port``;
PREFIX the key prefix), JetStream (ADDR a ``nats://`` URL; PREFIX the
subject prefix) or an MQTT shared subscription (ADDR a ``mqtt://`` URL;
PREFIX the topic prefix; ``--client-id`` to resume a session) and handles every inbound message by appending
``<message id> <content> <session> <time>`` to LOG, a line per message,
flushed at once so that a SIGKILL loses nothing it wrote. It prints ``ready`` once reading and,
at end of input, stops and prints its metrics as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from nekobot_bus import Message, create_bus


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("prefix")
    parser.add_argument("log")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each message takes")
    parser.add_argument("--dedup", type=float, default=0.0, help="dedup_window")
    parser.add_argument("--channels", default="*", help="comma-separated channels to handle")
    parser.add_argument("--shards", type=int, default=0, help="shards, for session order across agents")
    parser.add_argument("--client-id", default=None, help="MQTT: a client id that outlives the process")
    args = parser.parse_args()
    queue = {"delivery": "queue", "group": "agents", "claim_idle": 1.0, "dedup_window": args.dedup}
    if args.addr.startswith("mqtt://"):
        queue = {"delivery": "queue", "group": "agents"}
        server = {"type": "mqtt", "mqtt_url": args.addr, "topic_prefix": args.prefix}
        server["client_id"] = args.client_id
    elif args.addr.startswith("nats://"):
        server = {"type": "nats", "nats_url": args.addr, "subject_prefix": args.prefix}
    else:
        server = {
            "type": "redis",
            "redis_addr": args.addr,
            "prefix": args.prefix,
            "shards": args.shards,
            "health_check_timeout": 1.0,
        }
    bus = create_bus({"bus": server | queue, "gateway": {"message_queue_size": 1000}})
    lock = threading.Lock()
    with open(args.log, "a", encoding="utf-8") as log:

        def handle(message: Message) -> None:
            if args.delay:
                time.sleep(args.delay)
            with lock:
                log.write(f"{message.id} {message.content} {message.session_id} {time.time():.6f}\n")
                log.flush()

        for channel in args.channels.split(","):
            bus.register_inbound_handler(channel, handle)
        with bus:
            print("ready", flush=True)
            sys.stdin.read()
    print(json.dumps(bus.get_metrics()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
