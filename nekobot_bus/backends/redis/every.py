"""``"*"`` on a cluster with sharded pub/sub: senders copy each message to a global channel.

A shard channel reaches only those subscribed to it by name, and there is
no sharded pattern subscription, so a ``"*"`` listener cannot subscribe to
every channel. Instead, while one runs, senders copy each message to
``{prefix}{direction}:[every]`` with a plain ``PUBLISH``, which every node
relays; the ``"*"`` listener subscribes to that channel alone (and to no
shard channel of that direction), so it gets each message once.

Senders learn that a listener runs from a lease key,
``{prefix}every:{direction}``, which each listener sets for
:data:`LEASE_SECONDS` and renews every :data:`RENEW_SECONDS`. A sender reads
it at most every :data:`CHECK_SECONDS` (timing the read from before it is
sent), so once a listener's lease is set and :data:`CHECK_SECONDS` have
passed, every sender copies: registering ``"*"`` (and starting a bus with
one) waits that long before it returns, which is the guarantee a
registration gives everywhere: a message sent after it returns is received.

While the lease's shard fails over, senders cannot read it and copy (so a
listener misses nothing), and a listener cannot renew it: it lives
:data:`LEASE_SECONDS`, longer than a failover takes.

The cost, while a ``"*"`` listener runs: every message is published twice,
and its copy crosses every node, as global pub/sub does; and each sending
process reads the lease key twice a second. Without one, nothing is copied.
A message with a copy is not counted ``unrouted`` (a node's count of its
own subscribers cannot tell whether any listener got the copy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from ...dispatch import Direction
from ...errors import BusConnectionError
from .client import CommandRunner
from .keyspace import Keyspace

__all__ = ["CHECK_SECONDS", "LEASE_SECONDS", "RENEW_SECONDS", "SETTLE_SECONDS", "EveryCopies"]

#: How stale a sender's knowledge of the listeners may be.
CHECK_SECONDS = 0.5
#: How long a listener's lease lives without renewal: after it stops, senders copy for this long.
#: Longer than a failover of the lease's shard, during which it cannot be renewed.
LEASE_SECONDS = 10.0
#: How often a running listener renews its lease.
RENEW_SECONDS = 1.0
#: How long after a lease is set every sender copies: :data:`CHECK_SECONDS`, and a margin.
SETTLE_SECONDS = CHECK_SECONDS + 0.05


class EveryCopies:
    """Both sides of the lease for one bus: whether to copy (sending), and its own leases. Thread-safe."""

    def __init__(self, runner: CommandRunner, keys: Keyspace) -> None:
        self._runner = runner
        self._keys = keys
        self._lock = threading.Lock()
        self._checked: dict[Direction, tuple[float, bool]] = {}
        self._listening: frozenset[Direction] = frozenset()
        self._set_at: dict[Direction, float] = {}  # when this bus first set each lease

    # -- sending ----------------------------------------------------------------

    def wanted(self, direction: Direction) -> bool:
        """Whether a ``"*"`` listener of *direction* runs, as of at most :data:`CHECK_SECONDS` ago."""
        with self._lock:
            checked_at, present = self._checked.get(direction, (float("-inf"), False))
        now = time.monotonic()
        if now - checked_at <= CHECK_SECONDS:
            return present
        try:
            [reply] = self._runner.run(
                [("GET", self._keys.every_lease(direction))], "reading the '*' lease", timeout=CHECK_SECONDS
            )
            present = reply is not None
        except BusConnectionError:  # its shard is failing over: copy, so that no listener misses a message
            present = True
        with self._lock:
            self._checked[direction] = (now, present)  # as of before the read
        return present

    # -- listening ----------------------------------------------------------------

    def listen(self, directions: Iterable[Direction], *, running: bool) -> float:
        """Hold leases for *directions* from now on; set the new ones at once when *running*.

        :returns: how long to wait before every sender copies for all of
            *directions*: :data:`CHECK_SECONDS` after a lease was set, less
            what has passed since (0 when not *running*: start() waits).
        """
        wanted = frozenset(directions)
        with self._lock:
            added = wanted - self._listening
            self._listening = wanted
        if not running:
            return 0.0
        if added:
            self._set(added)
            with self._lock:
                self._set_at.update(dict.fromkeys(added, time.monotonic()))
        with self._lock:
            newest = max((self._set_at.get(d, float("-inf")) for d in wanted), default=float("-inf"))
        return max(0.0, newest + SETTLE_SECONDS - time.monotonic())

    def renew(self) -> None:
        """Set this bus's leases again; called every :data:`RENEW_SECONDS` while it runs."""
        with self._lock:
            listening = self._listening
        if listening:
            self._set(listening)

    def listening(self) -> bool:
        with self._lock:
            return bool(self._listening)

    def _set(self, directions: Iterable[Direction]) -> None:
        lease_ms = int(LEASE_SECONDS * 1000)
        self._runner.run(
            [("SET", self._keys.every_lease(d), b"1", "PX", lease_ms) for d in directions],
            "renewing the '*' lease",
            timeout=RENEW_SECONDS,
        )
