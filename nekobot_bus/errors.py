"""The exceptions of :mod:`nekobot_bus`.

Everything the library raises on purpose derives from :class:`NekobotBusError`,
so ``except NekobotBusError`` catches all of it. Where the meaning matches a
built-in exception, that built-in is mixed in as well: a full bus is a
:class:`TimeoutError`, a payload that is not a message is a :class:`ValueError`,
an unreachable Redis is a :class:`ConnectionError`.
"""

from __future__ import annotations

__all__ = [
    "BusClosedError",
    "BusConnectionError",
    "BusFullError",
    "BusNotStartedError",
    "BusReplyError",
    "ConfigError",
    "InvalidChannelError",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageError",
    "NekobotBusError",
    "RequestTimeoutError",
    "UnroutedMessageError",
]


class NekobotBusError(Exception):
    """The root of every exception this library raises on purpose."""


class ConfigError(NekobotBusError, ValueError):
    """A configuration is malformed: the message names the key and the rule."""


# -- messages -----------------------------------------------------------------


class MessageError(NekobotBusError, ValueError):
    """A message, or the bytes that should hold one, is not acceptable."""


class InvalidChannelError(MessageError):
    """A channel id breaks one of the rules of :func:`validate_channel_id`."""


class MessageDecodeError(MessageError):
    """Bytes from the wire are not a message; the text says what was wrong."""


class MessageEncodeError(MessageError):
    """A message cannot be written as JSON (too large, or ``data`` not JSON)."""


# -- the bus ------------------------------------------------------------------


class BusClosedError(NekobotBusError, RuntimeError):
    """A message was sent to a bus that has been stopped."""


class BusFullError(NekobotBusError, TimeoutError):
    """A send waited ``send_timeout`` seconds for room in a full queue."""


class BusNotStartedError(NekobotBusError, RuntimeError):
    """A call that needs a running bus (a request) came before :meth:`~nekobot_bus.Bus.start`."""


class BusConnectionError(NekobotBusError, ConnectionError):
    """A remote backend could not reach its server within the time allowed."""


class BusReplyError(NekobotBusError, RuntimeError):
    """The server refused a command; the text names what the bus was doing and the server's reply."""


class UnroutedMessageError(NekobotBusError, LookupError):
    """A remote send reached no subscriber and the bus was told to raise."""


class RequestTimeoutError(NekobotBusError, TimeoutError):
    """No reply to a :meth:`~nekobot_bus.Bus.request` came within its timeout; it is forgotten."""
