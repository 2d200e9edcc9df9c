"""Configuration: load it, pick the backend, build the bus.

The documented shape, shared with the Go gateway::

    {"bus": {"type": "local", "workers": 4, "send_timeout": 5.0, "dispatch": "threaded"},
     "gateway": {"message_queue_size": 100}}

Other top-level sections (the rest of a gateway's config file) are ignored,
so the gateway's whole file can be passed; unknown keys inside ``bus`` are
errors, and so are bus keys at the top level (the ``bus`` wrapper
forgotten) and a top-level name that is a near miss of a section read here
(``buss``, ``gatway``): either would otherwise build a local bus silently.

Backends are found in :data:`BUILTIN_BACKENDS`, then in the entry
point group ``nekobot_bus.backends`` (name: the ``bus.type``; value: a
:class:`~nekobot_bus.Bus` subclass), then in :func:`register_backend` calls.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Union, cast

from .bus import Bus
from .errors import ConfigError

__all__ = [
    "BUILTIN_BACKENDS",
    "ConfigSource",
    "available_backends",
    "check_sections",
    "create_bus",
    "load_config",
    "register_backend",
]

#: A config as :func:`create_bus` takes it: a mapping, a JSON text, or a path to a JSON file.
ConfigSource = Union[Mapping[str, Any], str, "os.PathLike[str]"]

ENTRY_POINT_GROUP = "nekobot_bus.backends"

logger = logging.getLogger("nekobot_bus")

#: The top-level sections read here: ``redis`` is the Go gateway's, read by the Redis bus.
SECTIONS = ("bus", "gateway", "redis")

#: Keys that tell a section: a near miss of a section's name holding one of them is a typo.
_SECTION_KEYS = {
    "bus": frozenset(
        {"type", "delivery", "workers", "send_timeout", "dispatch", "group", "prefix", "redis_prefix"}
        | {"redis_addr", "redis_url", "redis_password", "redis_db", "redis_sentinels", "nats_url", "mqtt_url"}
    ),
    "gateway": frozenset({"message_queue_size"}),
    "redis": frozenset({"addr", "password", "db"}),
}

#: Keys that belong in a section, found at the top level of a config: the wrapper was forgotten.
_MISPLACED = {
    **dict.fromkeys(
        [
            *("type", "delivery", "workers", "send_timeout", "dispatch", "group"),
            *("redis_addr", "redis_url", "redis_password", "redis_db", "redis_sentinels"),
            *("nats_url", "subject_prefix", "mqtt_url", "topic_prefix"),
        ],
        "bus",
    ),
    "message_queue_size": "gateway",
}

#: Builds a bus from a whole config: a :class:`Bus` subclass's ``from_config``,
#: or a factory that picks among classes (the ``redis`` type picks its delivery).
BusFactory = Callable[[Mapping[str, Any]], Bus]

#: ``bus.type`` to ``"module:Class"`` or ``"module:factory"``; imported only
#: when asked for, so the local bus works without the ``redis`` package.
BUILTIN_BACKENDS: Mapping[str, str] = {
    "local": "nekobot_bus.backends.local:LocalBus",
    "redis": "nekobot_bus.backends.redis:create",
    "nats": "nekobot_bus.backends.nats:create",
    "mqtt": "nekobot_bus.backends.mqtt:create",
}

#: Extra a backend's module needs, named in the error when its import fails.
_EXTRAS = {"redis": "redis", "nats": "nats", "mqtt": "mqtt"}

_registered: dict[str, BusFactory] = {}
_registry_lock = threading.Lock()


def register_backend(type_name: str, backend: type[Bus] | BusFactory) -> None:
    """Make *backend* available as ``bus.type`` *type_name* in this process.

    :param backend: a :class:`Bus` subclass (built with its ``from_config``)
        or a factory taking the whole config and returning a bus.
    """
    with _registry_lock:
        _registered[type_name] = _factory(backend, repr(backend), TypeError)


def available_backends() -> list[str]:
    """The ``bus.type`` names known here: built in, installed, registered."""
    names = set(BUILTIN_BACKENDS) | set(_registered)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _factory(backend: object, where: str, error: type[Exception]) -> BusFactory:
    if isinstance(backend, type):
        if issubclass(backend, Bus):
            return backend.from_config
    elif callable(backend):
        return cast("BusFactory", backend)
    raise error(f"backend {where} must be a Bus subclass or a factory of buses, not {backend!r}")


def _backend(type_name: str) -> BusFactory:
    with _registry_lock:
        if type_name in _registered:
            return _registered[type_name]
    target = BUILTIN_BACKENDS.get(type_name)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
            target = ep.value
            break
    if target is None:
        known = ", ".join(repr(name) for name in available_backends())
        raise ConfigError(f"bus.type {type_name!r} is not a known backend; known: {known}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(type_name)
        hint = f"; install it with: pip install 'nekobot_bus[{extra}]'" if extra else ""
        raise ConfigError(
            f"bus.type {type_name!r} needs {exc.name or module_name!r}, which is not installed{hint}"
        ) from exc
    return _factory(getattr(module, attr, None), f"of bus.type {type_name!r} ({target})", ConfigError)


def load_config(source: ConfigSource) -> dict[str, Any]:
    """Parse *source* into a dict: a mapping is copied, a string starting with
    ``{`` is JSON, anything else is the path of a JSON file.

    :raises ConfigError: if the file is missing or the JSON is invalid.
    """
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text, origin = source, "config JSON"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text, origin = path.read_text(encoding="utf-8"), f"config file {str(path)!r}"
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    else:
        raise ConfigError(f"config must be a mapping, a JSON string or a path, not {type(source).__name__}")
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{origin} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ConfigError(f"{origin} must hold a JSON object, not {type(parsed).__name__}")
    return parsed


def create_bus(config: ConfigSource | None = None) -> Bus:
    """Build the bus *config* describes (the local bus when it is ``None``).

    The bus is not started; use ``with create_bus(...) as bus:`` or call
    :meth:`~nekobot_bus.Bus.start`.

    :raises ConfigError: naming the key that is wrong and why.
    """
    parsed = load_config({} if config is None else config)
    check_sections(parsed)
    bus_section = parsed.get("bus") or {}
    if not isinstance(bus_section, Mapping):
        raise ConfigError(f"bus must be an object, not {type(bus_section).__name__}")
    type_name = bus_section.get("type", "local")
    if not isinstance(type_name, str):
        raise ConfigError(f"bus.type must be a string, not {type_name!r}")
    bus = _backend(type_name)(parsed)
    logger.info("create_bus built %r", bus)
    return bus


def check_sections(config: Mapping[str, Any]) -> None:
    """Refuse a config whose top level says what belongs in a section, or misspells a section.

    :raises ConfigError: naming the keys and the section they belong in, or
        the section a name is close to.
    """
    misplaced: dict[str, list[str]] = {}
    for key in config:
        if not isinstance(key, str):
            raise ConfigError(f"the config has a top-level key that is not a string: {key!r}")
        if key in _MISPLACED and key not in SECTIONS:
            misplaced.setdefault(_MISPLACED[key], []).append(key)
    for where, keys in misplaced.items():
        inner = ", ".join(f'"{k}": ...' for k in keys)
        verb = "belongs" if len(keys) == 1 else "belong"
        raise ConfigError(
            f'{", ".join(keys)} {verb} under {where!r}: write {{"{where}": {{{inner}}}}}; '
            "at the top level they would be ignored"
        )
    for key, value in config.items():
        if key in SECTIONS:
            continue
        close = difflib.get_close_matches(key.lower(), SECTIONS, n=1, cutoff=0.66)
        # A near miss that holds that section's keys; a "reddit" section of a gateway is left alone.
        if close and isinstance(value, Mapping) and set(value) & _SECTION_KEYS[close[0]]:
            raise ConfigError(
                f"top-level section {key!r} is not read; did you mean {close[0]!r}? "
                f"(the sections read are {', '.join(SECTIONS)}; other names are ignored)"
            )
