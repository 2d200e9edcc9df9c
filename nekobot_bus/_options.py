"""Options as frozen attrs classes: one place for each default, each rule and each error.

Every backend's options are attrs classes whose fields carry their default
and a validator. The constructor of a bus builds them from its keyword
arguments and :func:`~nekobot_bus.create_bus` structures them from the
config with :data:`converter`, so both see the same defaults and the same
errors, which name the key, the rule and the value:
``bus.claim_idle must be a number >= 0.05, not -1``. cattrs only maps keys
to fields here; the validators check every value, strictly (``"5"`` is not
a number, ``true`` is not an integer).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from .errors import ConfigError

__all__ = [
    "DispatchOptions",
    "Rule",
    "as_float",
    "converter",
    "dispatch_options",
    "flag",
    "integer",
    "keys_of",
    "one_of",
    "seconds",
    "section",
    "split_section",
    "structure",
    "text",
]

T = TypeVar("T")
_MISSING: Any = object()


class Rule(ConfigError):
    """An option that breaks its rule; names the option, the rule and the value."""

    def __init__(self, name: str, rule: str, value: object) -> None:
        super().__init__(f"{name} must be {rule}, not {value!r}")
        self.name, self.rule, self.value = name, rule, value

    def within(self, section: str) -> ConfigError:
        """The same error with the option's place in the config: ``bus.claim_idle``."""
        return ConfigError(f"{section}.{self}")


def _check(ok: bool, attribute: attrs.Attribute[Any], rule: str, value: object) -> None:
    if not ok:
        raise Rule(attribute.name, rule, value)


def integer(minimum: int = 0) -> Any:
    """An int (not a bool) of at least *minimum*."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        _check(isinstance(value, int) and not isinstance(value, bool), attribute, "an integer", value)
        _check(value >= minimum, attribute, f"an integer >= {minimum}", value)  # type: ignore[operator]

    return validate


def as_float(value: Any) -> Any:
    """An int of seconds as a float (a bool stays, for :func:`seconds` to refuse); an attrs converter."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def seconds(minimum: float = 0.0, *, optional: bool = False) -> Any:
    """A number of seconds (int or float, not a bool) of at least *minimum*; or ``None``."""
    kind = "a number or null" if optional else "a number"

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), attribute, kind, value)
        _check(value >= minimum, attribute, f"a number >= {float(minimum)}", value)  # type: ignore[operator]

    return validate


def text(*, empty: bool = True) -> Any:
    """A string; with ``empty=False``, a non-empty one."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        ok = isinstance(value, str) and (empty or bool(value))
        _check(ok, attribute, "a string" if empty else "a non-empty string", value)

    return validate


def flag(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """``true`` or ``false``."""
    _check(isinstance(value, bool), attribute, "true or false", value)


def one_of(*choices: str) -> Any:
    """One of the strings *choices*."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        _check(value in choices, attribute, "one of " + ", ".join(map(repr, choices)), value)

    return validate


def _to_float(value: Any) -> Any:
    # Seconds are floats once valid; anything else stays as it is for the validator to name.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: Maps config keys to fields; values pass untouched to the fields' validators.
converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)
for _kind in (int, float, str, bool):
    converter.register_structure_hook(_kind, lambda value, _cls: value)
converter.register_structure_hook_func(lambda cls: not attrs.has(cls), lambda value, _cls: value)


def structure(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """Build *cls* from *values* (keys its fields), with errors that name ``section.key``."""
    try:
        return converter.structure(dict(values), cls)
    except Rule as exc:
        raise exc.within(section) from None
    except cattrs.ForbiddenExtraKeysError as exc:
        raise ConfigError(f"unknown key {section}.{sorted(exc.extra_fields)[0]}") from None


def keys_of(*classes: type) -> list[str]:
    """The config keys of *classes*: their fields' names."""
    return [field.name for cls in classes for field in attrs.fields(cls)]


def split_section(
    section: str, values: object, groups: Mapping[str, Collection[str]], also: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Split a config section by which option class each key belongs to.

    :param groups: group name to the keys it takes.
    :param also: keys read elsewhere (``type``, ``delivery``) and accepted.
    :raises ConfigError: for a key no group takes, listing every key accepted.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be an object, not {type(values).__name__}")
    owner = {key: group for group, keys in groups.items() for key in keys}
    accepted = sorted({*owner, *also})
    parts: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{section} has a key that is not a string: {key!r}")
        if key in owner:
            parts[owner[key]][key] = value
        elif key not in also:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {section}.{key}{hint}; {section} accepts: " + ", ".join(accepted))
    return parts


@attrs.frozen(kw_only=True)
class DispatchOptions:
    """How every bus hands messages to handlers.

    :param queue_size: bound of each worker's queue (the gateway's ``message_queue_size``).
    :param workers: worker threads per direction; a session always goes to the same one.
    :param send_timeout: seconds a send waits for room in a full queue, or
        for its server, before it raises; ``None`` waits forever.
    :param dispatch: ``"threaded"`` runs handlers on worker threads;
        ``"inline"`` runs them in the sending thread (the local bus only).
    :param max_requests: how many :meth:`~nekobot_bus.Bus.request` calls may
        await their reply at once.
    """

    queue_size: int = attrs.field(default=100, validator=integer(1))
    workers: int = attrs.field(default=4, validator=integer(1))
    send_timeout: float | None = attrs.field(
        default=5.0, converter=_to_float, validator=seconds(optional=True)
    )
    dispatch: str = attrs.field(default="threaded", validator=one_of("threaded", "inline"))
    max_requests: int = attrs.field(default=10000, validator=integer(1))

    #: The keys of the ``bus`` section these options take (``queue_size`` comes from ``gateway``).
    BUS_KEYS = ("workers", "send_timeout", "dispatch", "max_requests")


def section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The section *name* of *config*: a mapping, ``{}`` when absent."""
    values = config.get(name)
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} must be an object, not {type(values).__name__}")
    return values


def dispatch_options(config: Mapping[str, Any], **overrides: Any) -> DispatchOptions:
    """The :class:`DispatchOptions` of a whole config (``bus`` and ``gateway`` sections)."""
    bus, gateway = section(config, "bus"), section(config, "gateway")
    values = {key: bus[key] for key in DispatchOptions.BUS_KEYS if key in bus}
    if "message_queue_size" in gateway:
        values["queue_size"] = gateway["message_queue_size"]
    try:
        return converter.structure(values | overrides, DispatchOptions)
    except Rule as exc:
        if exc.name == "queue_size":
            raise ConfigError(f"gateway.message_{exc}") from None
        raise exc.within("bus") from None
