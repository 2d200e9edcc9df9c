"""The MQTT backend's options (the connection, the queue delivery's), read from a config's ``bus`` section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from ... import codec
from ..._options import (
    as_float,
    flag,
    integer,
    seconds,
    text,
)
from ..._urls import redact
from ...dispatch import DEFAULT_INTAKE_BYTES
from ...errors import ConfigError
from ..remote_options import RemoteConfig, read_remote
from .topics import DEFAULT_TOPIC_PREFIX

__all__ = ["DEFAULT_GROUP", "DEFAULT_MQTT_URL", "MqttConfig", "MqttOptions", "QueueOptions", "read_config"]

DEFAULT_MQTT_URL = "mqtt://localhost:1883"
#: The queue delivery's group when the config names none, as on Redis and NATS.
DEFAULT_GROUP = "nekobot"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def check_url(_instance: object, _attribute: object, url: object) -> None:
    """*url*, a ``mqtt://`` or ``mqtts://`` URL with a host and a usable port.

    :raises ConfigError: naming ``bus.mqtt_url`` and the rule, never the password.
    """
    if not isinstance(url, str):
        raise ConfigError(f"bus.mqtt_url must be a URL string, not {type(url).__name__}")
    shown = redact(url) if "://" in url else url.rpartition("@")[2]
    parts = urlsplit(url)
    if "://" not in url or parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"bus.mqtt_url must start with mqtt:// or mqtts://, not {shown!r}")
    if not parts.hostname:
        raise ConfigError(f"bus.mqtt_url names no host: {shown!r}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"bus.mqtt_url: the port must be a number from 1 to 65535, in {shown!r}")


def _qos(_instance: object, _attribute: object, value: object) -> None:
    if value not in (0, 1) or isinstance(value, bool):
        raise ConfigError(f"bus.qos must be 0 or 1, not {value!r}")


def _group(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, str) or not value or set(value) & set("/+#\0"):
        raise ConfigError(f"bus.group must be a non-empty string without '/', '+' or '#', not {value!r}")


@attrs.frozen(kw_only=True)
class MqttOptions:
    """How the MQTT bus connects and reads.

    :param mqtt_url: ``mqtt://[user:password@]host[:port]``, or ``mqtts://`` for TLS.
    :param topic_prefix: the topics' first levels.
    :param qos: 1 (the default): the broker confirms each send and delivers
        at least once; 0: neither.
    :param client_id: the MQTT client id; ``None``: a new one per bus. A
        queue consumer that should find its session again after a restart
        needs one that stays the same.
    :param session_expiry: seconds the broker keeps the session of a
        disconnected client (its subscriptions, and QoS 1 messages for it).
    :param connect_timeout: seconds one connection attempt may take.
    :param health_check_interval: the keepalive, in seconds: the client
        pings when idle, and the broker drops a client silent for 1.5 times it.
    :param raise_on_unrouted: a send that matched no subscription (the
        broker's PUBACK says so; the message is gone) raises
        :class:`~nekobot_bus.UnroutedMessageError`; otherwise it is only
        counted ``unrouted``. QoS 1 only.
    :param max_message_size: largest payload sent or accepted, in bytes.
    :param intake_bytes: what may wait in memory for busy workers before a
        message is dropped, and counted.
    """

    mqtt_url: str = attrs.field(default=DEFAULT_MQTT_URL, repr=False, validator=check_url)
    topic_prefix: str = attrs.field(default=DEFAULT_TOPIC_PREFIX, validator=text(empty=False))
    qos: int = attrs.field(default=1, validator=_qos)
    client_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))
    session_expiry: float = attrs.field(default=60.0, converter=as_float, validator=seconds(0.0))
    connect_timeout: float = attrs.field(default=2.0, converter=as_float, validator=seconds(0.01))
    health_check_interval: float = attrs.field(default=5.0, converter=as_float, validator=seconds(1.0))
    raise_on_unrouted: bool = attrs.field(default=False, validator=flag)
    max_message_size: int = attrs.field(default=codec.DEFAULT_MAX_SIZE, validator=integer(1024))
    intake_bytes: int = attrs.field(default=DEFAULT_INTAKE_BYTES, validator=integer(1))


@attrs.frozen(kw_only=True)
class FanoutOptions:
    """The fan-out (``delivery: "fanout"``): every subscribed process gets every message; no options."""


@attrs.frozen(kw_only=True)
class QueueOptions:
    """The queue delivery (``delivery: "queue"``): a shared subscription per group.

    :param group: the members of one group share the work
        (``$share/{group}/...``): the broker gives each message to one.
    :param max_deliveries: runs of a failing handler before the message is
        dead-lettered (MQTT does not count deliveries for the bus).
    :param retry_backoff: the first wait before a failed handler runs again, doubling.
    """

    group: str = attrs.field(default=DEFAULT_GROUP, validator=_group)
    max_deliveries: int = attrs.field(default=5, validator=integer(1))
    retry_backoff: float = attrs.field(default=0.5, converter=as_float, validator=seconds(0.0))


#: Everything a config says about an MQTT bus, checked.
MqttConfig = RemoteConfig[MqttOptions]


def read_config(config: Mapping[str, Any]) -> MqttConfig:
    """Read and check the ``bus`` section of an MQTT bus's config.

    :raises ConfigError: naming the key, the rule and the value; for a key
        the backend does not use, naming every key it accepts.
    """
    deliveries = {"fanout": FanoutOptions, "queue": QueueOptions}
    return read_remote(config, MqttOptions, deliveries, "'fanout' or 'queue' (a shared subscription) on MQTT")
