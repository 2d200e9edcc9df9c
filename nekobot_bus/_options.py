"""Reading one section of a config with errors that name the key and the rule."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["Section"]

_MISSING: Any = object()


class Section:
    """Typed access to one config section, remembering which keys were read.

    :param name: the section's path in the config, e.g. ``"bus"``, used in errors.
    :param values: the section, or ``None`` when absent.
    """

    def __init__(self, name: str, values: object) -> None:
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{name} must be an object, not {type(values).__name__}")
        for key in values:
            if not isinstance(key, str):
                raise ConfigError(f"{name} has a key that is not a string: {key!r}")
        self.name = name
        self._values: Mapping[str, Any] = values
        self._known: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def _get(self, key: str, default: Any) -> Any:
        self._known.append(key)
        value = self._values.get(key, default)
        if value is _MISSING:
            raise ConfigError(f"{self.name}.{key} is required")
        return value

    def _fail(self, key: str, rule: str, value: object) -> ConfigError:
        return ConfigError(f"{self.name}.{key} must be {rule}, not {value!r}")

    def text(self, key: str, default: str = _MISSING, *, choices: Collection[str] = ()) -> str:
        """A string; with *choices*, one of them."""
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        if choices and value not in choices:
            raise self._fail(key, "one of " + ", ".join(map(repr, choices)), value)
        return value

    def integer(self, key: str, default: int = _MISSING, *, minimum: int | None = None) -> int:
        """An integer (not a bool), at least *minimum*."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        if minimum is not None and value < minimum:
            raise self._fail(key, f"an integer >= {minimum}", value)
        return value

    def seconds(self, key: str, default: float | None = _MISSING, *, minimum: float = 0.0) -> float | None:
        """A number of seconds (int or float, not a bool), at least *minimum*, or null."""
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number", value)
        if value < minimum:
            raise self._fail(key, f"a number >= {minimum}", value)
        return float(value)

    def flag(self, key: str, default: bool = _MISSING) -> bool:
        """``true`` or ``false``."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def check_no_unknown_keys(self, also_known: Collection[str] = ()) -> None:
        """Raise if the section has a key nobody read, naming the ones it may have."""
        known = {*self._known, *also_known}
        unknown = sorted(set(self._values) - known)
        if unknown:
            raise ConfigError(
                f"unknown key {self.name}.{unknown[0]}; {self.name} accepts: " + ", ".join(sorted(known))
            )
