"""The fan-out's reader on a cluster with sharded pub/sub: one connection per primary it needs.

A shard channel is served by the primary of its slot alone, so the bus's
wanted channels are split by the :class:`~.cluster.SlotMap`: each primary
that serves one gets a :class:`NodeReader`, a thread of its own with a
supervised connection (:class:`~.reader_link.ReaderLink`) that
``SSUBSCRIBE``\\ s to its share. Global names (the copies ``"*"`` listeners
read, and the wake channel) go to one more reader on the node the bus uses.

:class:`ShardedReader` splits and confirms. It splits again, asking the
cluster for its map first, whenever a reader says its share is stale:

- Redis unsubscribed a channel by itself (its slot migrated elsewhere);
- a ``SSUBSCRIBE`` was answered ``MOVED``;
- a connection broke or could not be made (a failover: the replica that
  took over serves the slots now).

A reader left with no share is stopped. A registration waits for the
readers whose share it changed; the bus's generation (``health()``) is
confirmed once every reader confirmed its share of it.

A reader passes on only the messages of the channels in its share now. A
primary demoted to a replica keeps serving its old subscriptions with the
shard's messages, which the reader that holds the channel now gets as
well: without that rule each would be handled twice. While a channel moves
from one reader to another, its messages are therefore passed on by
neither until the new subscription holds: at most once, like any
resubscription. What this bus sent to itself in that gap is counted
``lost`` by the new reader's marker (:mod:`~nekobot_bus.backends.read_back`);
what other processes sent is not seen, as with a broken connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ..._threads import join_all
from ...errors import BusConnectionError
from ...metrics import Metrics
from .client import Reachability, RedisUnreachable
from .cluster import Node, SlotMap
from .every import RENEW_SECONDS, EveryCopies
from .reader_link import ReaderLink
from .subscriber import Subscriptions, covers
from .topology import ClusterNodes

__all__ = ["NodeReader", "ShardedReader", "link_maker"]

logger = logging.getLogger("nekobot_bus.redis")


def link_maker(
    server: ClusterNodes,
    options: dict[str, Any],
    *,
    name: str,
    metrics: Metrics,
    reachability: Reachability,
) -> Callable[[Node | None, threading.Event], ReaderLink]:
    """What builds a reader's link: to *node*, or for ``None`` to the node the bus uses."""

    def make(node: Node | None, stopping: threading.Event) -> ReaderLink:
        if node is None:
            return ReaderLink(
                server.pool(**options),
                address=server.address,
                name=name,
                metrics=metrics,
                stopping=stopping,
                reachability=reachability,
            )
        address = f"{node[0]}:{node[1]}"
        return ReaderLink(
            server.node_pool(node, **options),
            address=address,
            name=f"{name} of {address}",
            metrics=metrics,
            stopping=stopping,
            reachability=reachability,
        )

    return make


class NodeReader:
    """One reader thread and its connection, holding the channels its :attr:`subs` want."""

    def __init__(
        self,
        node: Node | None,
        link: ReaderLink,
        stopping: threading.Event,
        wake: str,
    ) -> None:
        self.node = node  # None: the reader of global names, on the node the bus uses
        self.link = link
        self.stopping = stopping
        self.wake = wake
        self.subs = Subscriptions(frozenset({wake}))
        self.thread: threading.Thread | None = None
        #: The bus generation each of this reader's generations carries.
        self.carries: dict[int, int] = {}
        self.subscribed = False  # the current connection confirmed its share


class ShardedReader:
    """Splits the bus's wanted names over :class:`NodeReader`\\ s, and confirms them. Thread-safe.

    :param subs: the bus's wanted names; confirmed here.
    :param is_shard: which names are shard channels (the rest are global).
    :param make_link: a :class:`ReaderLink` to a node, or to the node in use for ``None``.
    :param read: the read loop of one reader (``read_subscribed`` with the health checks bound).
    :param receive: called with each message's channel and payload, from the reader that holds it.
    :param wake: publishes a wake-up to a reader's wake channel.
    :param confirmed: called with every name held once a generation of the bus is confirmed.
    :param share_confirmed: called with a reader's wake channel when it confirmed its share.
    :param every: the bus's ``"*"`` leases, which the keeper thread renews.
    """

    def __init__(
        self,
        *,
        subs: Subscriptions,
        slots: SlotMap,
        is_shard: Callable[[str], bool],
        make_link: Callable[[Node | None, threading.Event], ReaderLink],
        read: Callable[..., None],
        receive: Callable[[str, bytes], None],
        wake: Callable[[str], None],
        wake_name: Callable[[str], str],
        confirmed: Callable[[frozenset[str]], None],
        share_confirmed: Callable[[str], None],
        every: EveryCopies,
    ) -> None:
        self._subs = subs
        self._slots = slots
        self._is_shard = is_shard
        self._make_link = make_link
        self._read = read
        self._receive = receive
        self._wake = wake
        self._wake_name = wake_name
        self._on_confirmed = confirmed
        self._share_confirmed = share_confirmed
        self._every = every
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._readers: dict[Node | None, NodeReader] = {}
        self._threads: list[threading.Thread] = []
        self._running = False
        #: The last split found a shard channel without a primary (no map, or a failover).
        self.unplaced = False
        self._starting = False

    # -- splitting (any thread) ---------------------------------------------------

    def start(self) -> None:
        """Start the readers, and the keeper thread that renews the ``"*"`` leases (every.py) and
        splits the channels again when one found no primary, every second until :meth:`stop`."""
        with self._lock:
            self._running = True
            keeper = threading.Thread(target=self._keep, name="nekobot-bus-redis-cluster-keeper", daemon=True)
            self._threads.append(keeper)
        keeper.start()
        self.apply()

    def _keep(self) -> None:
        while not self._stopping.wait(RENEW_SECONDS):
            self.retry()
            try:
                self._every.renew()
            except BusConnectionError as exc:  # the next round tries again; the lease outlives two
                logger.debug("could not renew the '*' lease: %s", exc)

    def apply(self, *, refresh: bool = False, resync: bool = False) -> list[tuple[Subscriptions, int]]:
        """Split the bus's current wanted names over the readers, starting and stopping readers.

        Only a reader whose share changed gets a new generation to confirm (or
        every reader with *resync*: Redis dropped a subscription by itself), so
        a registration waits for the primaries it concerns, not for a primary
        failing over elsewhere. With *refresh*, or when the map places no
        primary for a channel, the cluster is asked for its map first. A
        channel still without one keeps the bus's generation unconfirmed;
        :meth:`retry` splits again.

        :returns: each changed reader's subscriptions and the generation to wait for.
        """
        for attempt in range(2):
            if refresh or attempt:
                try:
                    self._slots.refresh()
                except RedisUnreachable as exc:
                    logger.debug("the cluster's slots could not be read: %s", exc)
            with self._lock:
                if not self._running:
                    return []
                wanted, generation = self._subs.current()
                shares, self.unplaced = self._split(wanted)
                if self.unplaced and not attempt:
                    continue
                for node, reader in list(self._readers.items()):
                    if node not in shares:
                        self._retire(reader)
                changed = [
                    self._give(node, names, generation, resync=resync) for node, names in shares.items()
                ]
            waits = [c for c in changed if c is not None]
            for reader, _ in waits:  # outside the lock: a round trip each
                self._wake(reader.wake)
            if not waits:
                self._settle_bus()  # no reader has anything to confirm: the bus's generation is held
            return [(reader.subs, own) for reader, own in waits]
        return []

    def _give(
        self, node: Node | None, names: set[str], generation: int, *, resync: bool
    ) -> tuple[NodeReader, int] | None:
        """Give the reader of *node* its share (under the lock); ``None`` when it holds it already."""
        reader = self._readers.get(node)
        if reader is None:
            reader = self._spawn(node)
        elif not resync and reader.subs.wanted - {reader.wake} == frozenset(names):
            if not self.unplaced:  # what it holds, or is about to, is this generation's share
                reader.carries[reader.subs.generation] = generation
            return None
        own = reader.subs.want(names)
        if not self.unplaced:  # else this generation lacks a channel: not to be confirmed
            reader.carries[own] = generation
        return reader, own

    def retry(self) -> None:
        """Split again if a channel found no primary last time; the keeper calls it every second."""
        if self.unplaced:
            self.apply(refresh=True)

    def _split(self, wanted: frozenset[str]) -> tuple[dict[Node | None, set[str]], bool]:
        """*wanted* by the reader that should hold each, and whether a shard channel has no primary."""
        shares: dict[Node | None, set[str]] = {None: set()}
        unplaced = False
        for name in wanted:
            if not self._is_shard(name):
                shares[None].add(name)
                continue
            node = self._slots.primary_of(name)
            if node is None:
                unplaced = True
                continue
            shares.setdefault(node, set()).add(name)
        return shares, unplaced

    def _spawn(self, node: Node | None) -> NodeReader:
        stopping = threading.Event()
        name = "global" if node is None else f"{node[0]}:{node[1]}"
        reader = NodeReader(node, self._make_link(node, stopping), stopping, self._wake_name(name))
        reader.link.starting = self._starting
        self._threads = [t for t in self._threads if t.is_alive()]  # retired readers' ended threads
        thread = threading.Thread(
            target=reader.link.run,
            args=(lambda conn: self._read_on(reader, conn), lambda: self._lost_link(reader)),
            name=f"nekobot-bus-redis-reader-{name}",
            daemon=True,
        )
        reader.thread = thread
        self._readers[node] = reader
        self._threads.append(thread)
        thread.start()
        return reader

    def _retire(self, reader: NodeReader) -> None:
        del self._readers[reader.node]
        reader.subs.want(set())  # from now on it passes on nothing but its wake channel
        reader.stopping.set()
        reader.link.interrupt()

    # -- the readers' threads -----------------------------------------------------

    def _read_on(self, reader: NodeReader, conn: Any) -> None:
        def receive(channel: str, payload: bytes) -> None:
            # Only the channels of its share: a node demoted to a replica still gets its shard's
            # messages, and the reader that holds the channel now would pass them on too.
            if covers(reader.subs.wanted, channel):
                self._receive(channel, payload)

        try:
            self._read(
                conn,
                receive=receive,
                subscriptions=reader.subs,
                stopping=reader.stopping,
                confirmed=lambda names: self._confirmed(reader, names),
                sharded=self._is_shard,
                moved=lambda _channel: self.apply(refresh=True, resync=True),
            )
        except redis.ResponseError:  # MOVED to a SSUBSCRIBE: the map is stale
            self.apply(refresh=True, resync=True)
            raise

    def _confirmed(self, reader: NodeReader, _held: frozenset[str]) -> None:
        reader.subscribed = True
        self._share_confirmed(reader.wake)
        self._settle_bus()

    def _settle_bus(self) -> None:
        """Confirm the bus's generation that every reader's confirmed share carries, if any."""
        with self._lock:
            readers = list(self._readers.values())
            confirmed = [r.carries.get(r.subs.confirmed, -1) for r in readers]
            for r in readers:  # generations no reader will confirm any more
                for own in [g for g in r.carries if g < r.subs.confirmed]:
                    del r.carries[own]
            held = frozenset().union(*(r.subs.current()[0] for r in readers))
        if confirmed and all(c >= 0 for c in confirmed):
            self._subs.confirm(min(confirmed))
            self._on_confirmed(held)

    def _lost_link(self, reader: NodeReader) -> None:
        reader.subscribed = False
        if not reader.stopping.is_set():
            self.apply(refresh=True)  # a failover moves its slots; ask where they are now

    # -- observing and stopping ---------------------------------------------------

    def subscribed(self) -> bool:
        with self._lock:
            readers = list(self._readers.values())
        return bool(readers) and all(r.subscribed and r.subs.up_to_date() for r in readers)

    def connected_since(self) -> float | None:
        """The latest connection time of the readers; ``None`` while any is disconnected."""
        with self._lock:
            readers = list(self._readers.values())
        times = [r.link.connected_since for r in readers]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def last_error(self) -> str | None:
        with self._lock:
            errors = [r.link.last_error for r in self._readers.values() if r.link.last_error]
        return errors[0] if errors else None

    def held_by(self, wake: str) -> Callable[[str], bool] | None:
        """Which channels the reader of the wake channel *wake* holds; ``None`` if no reader has it."""
        with self._lock:
            reader = next((r for r in self._readers.values() if r.wake == wake), None)
        if reader is None:
            return None
        names, _ = reader.subs.current()
        return lambda channel: covers(names, channel)

    def owns(self, thread: threading.Thread) -> bool:
        with self._lock:
            return any(reader.thread is thread for reader in self._readers.values())

    def set_starting(self, starting: bool) -> None:
        """While ``start()`` waits (its error tells a failure), the links do not log it too."""
        with self._lock:
            self._starting = starting
            for reader in self._readers.values():
                reader.link.starting = starting

    def stop(self, deadline: float) -> list[threading.Thread]:
        """Stop every reader; the threads still alive at *deadline*."""
        self._stopping.set()
        with self._lock:
            self._running = False
            readers, self._readers = list(self._readers.values()), {}
            threads = list(self._threads)
        for reader in readers:
            reader.stopping.set()
            reader.subs.close()
            reader.link.interrupt()
        alive = join_all(threads, deadline)
        for reader in readers:
            reader.link.close()
        return alive

    def nodes(self) -> Iterable[Node]:
        with self._lock:
            return [node for node in self._readers if node is not None]
