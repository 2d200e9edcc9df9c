"""The NATS backend's options (the connection, each delivery's), read from a config's ``bus`` section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from ... import codec
from ..._options import (
    as_float,
    integer,
    seconds,
    text,
)
from ..._urls import redact
from ...dispatch import DEFAULT_INTAKE_BYTES
from ...errors import ConfigError
from ..remote_options import RemoteConfig, read_remote
from .subjects import DEFAULT_SUBJECT_PREFIX

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_NATS_URL",
    "FanoutOptions",
    "JetStreamOptions",
    "NatsConfig",
    "NatsOptions",
    "read_config",
]

DEFAULT_NATS_URL = "nats://localhost:4222"
URL_SCHEMES = ("nats", "tls")
#: The queue delivery's group when the config names none, as on Redis.
DEFAULT_GROUP = "nekobot"
#: What JetStream refuses in a consumer's name (the group's is part of it).
_NOT_IN_A_NAME = frozenset(".*>/\\")


def _servers(_instance: object, _attribute: object, value: object) -> None:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"bus.nats_url must be a URL or a non-empty list of URLs, not {value!r}")
    for url in urls:
        check_url(url)


def check_url(url: str) -> str:
    """*url*, a ``nats://`` or ``tls://`` URL with a host and a usable port.

    :raises ConfigError: naming ``bus.nats_url`` and the rule, never the password.
    """
    shown = redact(url) if "://" in url else url.rpartition("@")[2]
    parts = urlsplit(url)
    if "://" not in url or parts.scheme not in URL_SCHEMES:
        raise ConfigError(
            f"bus.nats_url must start with {' or '.join(s + '://' for s in URL_SCHEMES)}, not {shown!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"bus.nats_url names no host: {shown!r}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"bus.nats_url: the port must be a number from 1 to 65535, in {shown!r}")
    return url


@attrs.frozen(kw_only=True)
class NatsOptions:
    """How the NATS bus connects and reads.

    :param nats_url: one server URL, or a list (the client picks, and fails over among them).
    :param subject_prefix: the subjects' first tokens.
    :param connect_timeout: seconds one connection attempt may take.
    :param health_check_interval: seconds between the client's PINGs; two
        unanswered ones and the connection is declared dead.
    :param max_message_size: largest payload sent or accepted, in bytes.
    :param intake_bytes: what the subscription may hold in memory for busy
        workers before it drops, and counts, a message.
    """

    nats_url: str | list[str] = attrs.field(default=DEFAULT_NATS_URL, repr=False, validator=_servers)
    subject_prefix: str = attrs.field(default=DEFAULT_SUBJECT_PREFIX, validator=text(empty=False))
    connect_timeout: float = attrs.field(default=2.0, converter=as_float, validator=seconds(0.01))
    health_check_interval: float = attrs.field(default=2.0, converter=as_float, validator=seconds(0.1))
    max_message_size: int = attrs.field(default=codec.DEFAULT_MAX_SIZE, validator=integer(1024))
    intake_bytes: int = attrs.field(default=DEFAULT_INTAKE_BYTES, validator=integer(1))

    @property
    def servers(self) -> list[str]:
        return [self.nats_url] if isinstance(self.nats_url, str) else list(self.nats_url)


def _group_name(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"bus.group must be a non-empty string, not {value!r}")
    bad = next((c for c in value if c in _NOT_IN_A_NAME or not ("!" <= c <= "~")), None)
    if bad is not None:
        raise ConfigError(
            f"bus.group {value!r} cannot name a JetStream consumer: {bad!r} is not allowed "
            "(printable ASCII without '.', '*', '>', '/', '\\' or spaces)"
        )


@attrs.frozen(kw_only=True)
class FanoutOptions:
    """The fan-out on core NATS (``delivery: "fanout"``).

    :param group: processes of one group share the work: NATS gives each
        message to one of them (a queue group), at most once; ``None``:
        every process gets every message.
    """

    group: str | None = attrs.field(default=None, validator=attrs.validators.optional(text(empty=False)))


@attrs.frozen(kw_only=True)
class JetStreamOptions:
    """The queue delivery on JetStream (``delivery: "queue"``), with the Redis queue's meanings.

    :param group: processes of one group share the work: each message goes
        to one of them (a durable consumer per group and channel); another
        group gets every message again.
    :param claim_idle: seconds a message may be held without a sign of life
        (JetStream's ack wait) before another member gets it; a slow handler
        keeps its message by telling the server it is still in progress.
    :param max_deliveries: deliveries before a failing message is dead-lettered.
    :param retry_backoff: the first wait before a failed handler runs again, doubling.
    :param dedup_window: seconds within which a second send of the same
        message id is stored once (JetStream's duplicate window); ``0``: off.
    :param max_len: messages each channel keeps in its stream; past that the
        oldest go, read or not.
    """

    group: str = attrs.field(default=DEFAULT_GROUP, validator=_group_name)
    claim_idle: float = attrs.field(default=30.0, converter=as_float, validator=seconds(0.1))
    max_deliveries: int = attrs.field(default=5, validator=integer(1))
    retry_backoff: float = attrs.field(default=0.5, converter=as_float, validator=seconds(0.0))
    dedup_window: float = attrs.field(default=0.0, converter=as_float, validator=seconds(0.0))
    max_len: int = attrs.field(default=100_000, validator=integer(1))


#: Everything a config says about a NATS bus, checked.
NatsConfig = RemoteConfig[NatsOptions]


def read_config(config: Mapping[str, Any]) -> NatsConfig:
    """Read and check the ``bus`` section of a NATS bus's config.

    :raises ConfigError: naming the key, the rule and the value; for a key
        the backend does not use, naming every key it accepts.
    """
    deliveries = {"fanout": FanoutOptions, "queue": JetStreamOptions}
    return read_remote(config, NatsOptions, deliveries, "'fanout' (core NATS) or 'queue' (JetStream) on NATS")
