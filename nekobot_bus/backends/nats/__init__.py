"""Many processes on NATS: the ``nats`` backend (the ``nats`` extra, nats-py).

- :mod:`.subjects`: the subjects, ``{prefix}.inbound.{channel_id}``, built and read in one place.
- :mod:`.options`: the options, and reading a config.
- :mod:`.loop`: the event loop thread that owns the asyncio client.
- :mod:`.fanout`: :class:`NatsBus`, every subscribed process (or one member
  of a group) gets each message, at most once.
"""

from .fanout import NatsBus
from .subjects import DEFAULT_SUBJECT_PREFIX, Subjects

__all__ = ["DEFAULT_SUBJECT_PREFIX", "NatsBus", "Subjects"]
