"""What the NATS and MQTT backends' options share: a connection, one attrs class per delivery.

A config names the delivery (``bus.delivery``, ``fanout`` by default);
:func:`read_remote` takes the connection's keys, that delivery's keys and
the dispatch keys out of the ``bus`` section, refusing any other key with
the list of those accepted. A bus class is built from the result by
:func:`build_remote`, and its constructor splits the same keyword arguments
again with :func:`split_options`, so both ways agree on every default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from .._options import DispatchOptions, dispatch_options, keys_of, section, split_section, structure
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..bus import Bus

__all__ = ["RemoteConfig", "build_remote", "read_remote", "split_options"]

C = TypeVar("C")


@attrs.frozen(kw_only=True)
class RemoteConfig(Generic[C]):
    """Everything a config says about a remote bus, checked: the connection, the delivery, the dispatch."""

    options: C
    delivery: Any  # an instance of one of the backend's delivery option classes
    dispatch: DispatchOptions


def read_remote(
    config: Mapping[str, Any], connection: type[C], deliveries: Mapping[str, type], choices: str
) -> RemoteConfig[C]:
    """Read and check the ``bus`` section of a remote bus's config.

    :param deliveries: each ``bus.delivery`` the backend has, to its options class.
    :param choices: the deliveries as the error names them: ``"'fanout' or 'queue' (JetStream)"``.
    :raises ConfigError: naming the key, the rule and the value; for a key
        the backend does not use, naming every key it accepts.
    """
    bus = section(config, "bus")
    delivery = bus.get("delivery", "fanout")
    kind = deliveries.get(delivery) if isinstance(delivery, str) else None
    if kind is None:
        raise ConfigError(f"bus.delivery must be {choices}, not {delivery!r}")
    parts = split_section(
        "bus",
        bus,
        {"connection": keys_of(connection), "delivery": keys_of(kind), "dispatch": DispatchOptions.BUS_KEYS},
        also=("type", "delivery"),
    )
    return RemoteConfig(
        options=structure(connection, parts["connection"], "bus"),
        delivery=structure(kind, parts["delivery"], "bus"),
        dispatch=dispatch_options(config),
    )


def split_options(options: Mapping[str, Any], *classes: type) -> list[dict[str, Any]]:
    """*options* split by the attrs class whose field each key names, in order; last, the rest."""
    names = [{field.name for field in attrs.fields(cls)} for cls in classes]
    parts: list[dict[str, Any]] = [{} for _ in range(len(classes) + 1)]
    for key, value in options.items():
        index = next((i for i, taken in enumerate(names) if key in taken), len(classes))
        parts[index][key] = value
    return parts


def build_remote(cls: Any, checked: RemoteConfig[Any], url_field: str) -> Bus:
    """``cls(url, **options)`` from *checked*, if *cls* is the class of its delivery.

    :param cls: a bus class with ``delivery`` (its name) and ``delivery_options`` (its class).
    :raises ConfigError: *checked* names another delivery.
    """
    if not isinstance(checked.delivery, cls.delivery_options):
        raise ConfigError(
            f"bus.delivery is not what {cls.__name__} delivers ({cls.delivery!r}); "
            "create_bus() picks the class"
        )
    options = attrs.asdict(checked.options)
    bus: Bus = cls(
        options.pop(url_field),
        **options,
        **attrs.asdict(checked.delivery),
        **attrs.asdict(checked.dispatch),
    )
    return bus
