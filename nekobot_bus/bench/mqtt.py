"""MqttBus against bare paho-mqtt publish/subscribe, and the shared-subscription queue, in the same run.

The baseline is what a program does with bare paho-mqtt 2.x: a client with
its network thread, subscribed at QoS 1, whose ``on_message`` notes the
time; the sending thread publishes at QoS 1 without waiting for the PUBACK.
MqttBus waits for the PUBACK before a send returns, and hands each message
to a worker thread. Both run at once on one broker and the sender
alternates between them message by message, as for Redis and NATS.
"""

from __future__ import annotations

import socket
import statistics
import threading
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .. import codec
from .._urls import redact
from ..backends.mqtt import MqttBus, MqttQueueBus
from ..message import Message
from ._measure import Alternation, bus_latency, producer_rates
from ._options import BenchOptions
from ._progress import Progress
from ._stats import REDIS_CLAIM, Result

__all__ = ["mqtt_problem", "run_mqtt", "steps_mqtt"]


def mqtt_problem(url: str) -> str | None:
    """Why the broker at *url* cannot be measured, or ``None`` when it takes a connection within 2 s."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 1883), timeout=2):
            return None
    except (OSError, ValueError) as exc:
        return f"the MQTT broker at {redact(url)} does not answer ({exc}); start one with 'mosquitto &'"


def _prefix() -> str:
    return f"nekobot-bench/{uuid.uuid4().hex[:8]}"


def paired_latency(url: str, count: int, payload_size: int = 1) -> tuple[list[float], list[float]]:
    """Send-to-handler latency of bare paho-mqtt and of MqttBus, message by message, in us."""
    parts = urlsplit(url)
    prefix = _prefix()
    pair = Alternation()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if parts.username:
        client.username_pw_set(parts.username, parts.password)
    client.on_message = pair.bare_received
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(parts.hostname or "localhost", parts.port or 1883)
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/bare", qos=1)
        if not subscribed.wait(5):
            raise RuntimeError("the bare subscriber's SUBACK did not come within 5 s")
        payload = codec.encode(Message(channel_id="bench", content="x" * payload_size))
        return pair.run(
            MqttBus(url, topic_prefix=prefix, workers=1),
            lambda: client.publish(f"{prefix}/bare", payload, qos=1),
            count,
            payload_size,
            bare_done=lambda info: info.wait_for_publish(5),  # its PUBACK
        )
    finally:
        client.disconnect()
        client.loop_stop()


def steps_mqtt(options: BenchOptions) -> int:
    """How many progress steps :func:`run_mqtt` takes."""
    fanout = options.rounds + 1 if "mqtt" in options.backends else 0
    return fanout + (options.rounds if "mqtt-queue" in options.backends else 0)


def run_mqtt(options: BenchOptions, progress: Progress) -> tuple[list[Result], dict[str, float]]:
    """Measure MQTT against ``options.mqtt_url``, which the caller found reachable."""
    url, size = options.mqtt_url, options.payload_size
    per_round = max(100, min(options.count, 2000) // options.rounds)
    results: list[Result] = []
    ratios: dict[str, float] = {}
    if "mqtt" in options.backends:
        bare: list[float] = []
        ours: list[float] = []
        p50_bare, p50_ours = [], []
        for _ in range(options.rounds):
            b, o = paired_latency(url, per_round, size)
            bare += b
            ours += o
            p50_bare.append(statistics.median(b))
            p50_ours.append(statistics.median(o))
            progress.step("mqtt fan-out")
        load_prefix = _prefix()  # the sender's and the receiver's
        one, many, lost = producer_rates(
            lambda workers: MqttBus(url, topic_prefix=load_prefix, workers=workers, queue_size=1000),
            min(options.count, 2000),
            options,
        )
        progress.step("mqtt fan-out, producers")
        results += [
            Result("paho-mqtt publish/subscribe (baseline)", bare, note="raw baseline, QoS 1"),
            Result("MqttBus fan-out", ours, one, many, None, REDIS_CLAIM, note=lost),
        ]
        ratios["mqtt_p50_vs_bare"] = statistics.median(p50_ours) / statistics.median(p50_bare)
    if "mqtt-queue" in options.backends:
        fanout_p50, queue_p50, queued = [], [], []
        for _ in range(options.rounds):
            prefix = _prefix()
            f = bus_latency(MqttBus(url, topic_prefix=prefix, workers=1), per_round, size)
            q = bus_latency(MqttQueueBus(url, topic_prefix=prefix, workers=1), per_round, size)
            queued += q
            fanout_p50.append(statistics.median(f))
            queue_p50.append(statistics.median(q))
            progress.step("mqtt queue")
        results.append(Result("MqttQueueBus shared subscription", queued, claim=REDIS_CLAIM))
        ratios["mqtt_queue_p50_vs_fanout"] = statistics.median(queue_p50) / statistics.median(fanout_p50)
    return results, ratios
