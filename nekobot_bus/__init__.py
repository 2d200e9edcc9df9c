"""nekobot_bus: the message bus between chat channels and the agent that answers them.

::

    from nekobot_bus import Message, create_bus

    with create_bus({"bus": {"type": "local"}}) as bus:
        bus.register_inbound_handler("telegram", lambda m: bus.send_outbound(m.reply("hi")))
        bus.register_outbound_handler("telegram", print)
        bus.send_inbound(Message(channel_id="telegram", session_id="chat:1", content="hello"))
        bus.wait_idle(5)
"""

from __future__ import annotations

from ._options import DispatchOptions
from .backends.local import LocalBus
from .bus import Bus, DispatchMode
from .codec import decode, encode
from .config import available_backends, create_bus, load_config, register_backend
from .dispatch import Direction, Handler
from .errors import (
    BusClosedError,
    BusConnectionError,
    BusFullError,
    BusNotStartedError,
    BusReplyError,
    ConfigError,
    InvalidChannelError,
    MessageDecodeError,
    MessageEncodeError,
    MessageError,
    NekobotBusError,
    RequestTimeoutError,
    UnroutedMessageError,
)
from .message import WILDCARD, Message, MessageType, validate_channel_id

__version__ = "0.1.0"

__all__ = [
    # buses
    "Bus",
    "LocalBus",
    "create_bus",
    "load_config",
    "register_backend",
    "available_backends",
    "DispatchOptions",
    # messages
    "Message",
    "MessageType",
    "Direction",
    "Handler",
    "DispatchMode",
    "WILDCARD",
    "validate_channel_id",
    "encode",
    "decode",
    # errors
    "NekobotBusError",
    "ConfigError",
    "MessageError",
    "InvalidChannelError",
    "MessageDecodeError",
    "MessageEncodeError",
    "BusClosedError",
    "BusFullError",
    "BusNotStartedError",
    "BusConnectionError",
    "BusReplyError",
    "RequestTimeoutError",
    "UnroutedMessageError",
]
