"""Redis Cluster: which primary serves a key's slot, and sending each command there.

:class:`SlotMap` holds the cluster's answer to ``CLUSTER SLOTS`` and asks
again when a node says the map is stale. :class:`ClusterRunner` is the
:class:`~.client.CommandRunner` of a bus on a cluster: a command without a
key (``PUBLISH``, ``PING``) goes to the node the bus uses for everything
else, one with a key (``SPUBLISH``, a claim's ``SET``) to the primary that
serves the key's slot, through a runner of that node's own.

A cluster's refusals that mean "not here, not now" are handled by name,
because each says the command did not run: ``MOVED`` (the slot has another
primary: ask for the map again and send it there), ``ASK`` (the slot is
migrating: send it, after ``ASKING``, to the node named), ``TRYAGAIN`` and
``CLUSTERDOWN`` (a migration or a failover in progress: wait and send it
again). A primary that cannot be reached means nothing was sent: the map is
asked for again (a replica may have taken over) and the command sent
again. All of it within the send's timeout; then
:class:`~.client.RedisUnreachable`. A connection that broke after writing
raises at once, as everywhere: the command may have run.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import redis
from redis.crc import key_slot

from ...errors import BusConnectionError
from ...metrics import Metrics
from .client import Backoff, CommandRunner, Reachability, RedisUnreachable, Script
from .compat import error_code

__all__ = ["ClusterRunner", "Node", "SlotMap"]

#: A node's ``(host, port)``.
Node = tuple[str, int]

#: Refusals that say the command did not run and will run elsewhere or later.
REDIRECTS = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})

#: Where each command's key is, for the commands the bus sends with one;
#: ``EVALSHA``'s first key follows the digest and the key count, and a
#: subcommand's (``XGROUP CREATE``, ``XINFO STREAM``) follows the subcommand.
_KEY_AT = {
    "SPUBLISH": 1, "SET": 1, "GET": 1, "DEL": 1, "PEXPIRE": 1, "EXISTS": 1, "EVALSHA": 3, "EVAL": 3,
    "XADD": 1, "XACK": 1, "XREVRANGE": 1, "XCLAIM": 1, "XPENDING": 1, "XGROUP": 2, "XINFO": 2,
    "SADD": 1, "SMEMBERS": 1, "ZREM": 1,
}  # fmt: skip


def key_of(command: Sequence[Any]) -> Any:
    """The key that routes *command*, or ``None`` for a command that any node runs."""
    position = _KEY_AT.get(command[0].upper() if isinstance(command[0], str) else str(command[0]).upper())
    if position is None or len(command) <= position:
        return None
    if position == 3 and int(command[2]) == 0:  # a script without keys
        return None
    return command[position]


def slot_of(key: str | bytes) -> int:
    """The hash slot of *key* (its ``{hash tag}`` alone, when it has one)."""
    return int(key_slot(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key))


class SlotMap:
    """Which primary serves each slot, as the cluster last said. Thread-safe.

    :param seeds: the configured nodes, asked when none of the known ones answers.
    :param ask: runs ``CLUSTER SLOTS`` on a node; raises when it cannot.
    """

    def __init__(self, seeds: Sequence[Node], ask: Callable[[Node], Any]) -> None:
        self._seeds = tuple(seeds)
        self._ask = ask
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, Node]] = []
        self._refreshed_at = 0.0
        self._asked_at = float("-inf")
        self._asking = threading.Lock()

    def primary_of(self, key: str | bytes) -> Node | None:
        """The primary serving *key*'s slot; ``None`` while the map has no answer for it."""
        slot = slot_of(key)
        with self._lock:
            if not self._ranges:
                return None
            i = bisect.bisect_right(self._starts, slot) - 1
            if i >= 0:
                start, end, node = self._ranges[i]
                if start <= slot <= end:
                    return node
        return None

    def primaries(self) -> set[Node]:
        with self._lock:
            return {node for _, _, node in self._ranges}

    #: Asking again sooner than this after the last attempt waits for that answer instead.
    MIN_INTERVAL = 0.05

    def refresh(self, since: float | None = None, *, deadline: float | None = None) -> None:
        """Ask the cluster again, unless an answer newer than *since* (``time.monotonic()``) is here,
        or another thread asked a moment ago; ask no node after *deadline*.

        :raises RedisUnreachable: no node answered.
        """
        with self._asking:  # one thread asks at a time; the others take its answer
            with self._lock:
                now = time.monotonic()
                if since is not None and self._refreshed_at > since:
                    return  # another thread asked since this one saw the map fail
                if now - self._asked_at < self.MIN_INTERVAL:
                    return
                self._asked_at = now
                candidates = [*dict.fromkeys([*(n for _, _, n in self._ranges), *self._seeds])]
            random.shuffle(candidates)
            self._ask_each(candidates, deadline)

    def _ask_each(self, candidates: list[Node], deadline: float | None) -> None:
        errors: list[str] = []
        for node in candidates:
            if errors and deadline is not None and time.monotonic() > deadline:  # one ask at least
                errors.append("the deadline passed")
                break
            try:
                reply = self._ask(node)
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            ranges = sorted(
                (int(start), int(end), _address(primary, node)) for start, end, primary, *_ in reply
            )
            if not ranges:
                errors.append(f"{node[0]}:{node[1]}: serves no slots yet")
                continue
            with self._lock:
                self._ranges = ranges
                self._starts = [start for start, _, _ in ranges]
                self._refreshed_at = time.monotonic()
            return
        raise RedisUnreachable(f"no cluster node told its slots ({'; '.join(errors)})")


def _address(primary: Sequence[Any], asked: Node) -> Node:
    host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
    return (host or asked[0], int(primary[1]))  # an empty host: the node that answered


class ClusterRunner(CommandRunner):
    """A :class:`~.client.CommandRunner` that sends each keyed command to the primary of its slot.

    :param client: for commands without a key: the node the bus uses.
    :param runner_for: builds the runner of one node, with its own pool.
    """

    #: How long one node's runner retries connecting before the map is asked again.
    NODE_CONNECT_TIMEOUT = 0.5

    def __init__(
        self,
        client: redis.Redis,
        address: str,
        metrics: Metrics,
        timeout: float | None,
        reachability: Reachability,
        *,
        slots: SlotMap,
        runner_for: Callable[[Node], CommandRunner],
    ) -> None:
        super().__init__(client, address, metrics, timeout, reachability)
        self.slots = slots
        self._runner_for = runner_for
        self._nodes: dict[Node, CommandRunner] = {}
        self._nodes_lock = threading.Lock()
        self._sources: list[str] = []

    def script(self, source: str) -> Script:
        with self._nodes_lock:
            self._sources.append(source)
            for runner in self._nodes.values():
                runner.script(source)
        return super().script(source)

    def node(self, node: Node) -> CommandRunner:
        """The runner of *node*, made on first use."""
        with self._nodes_lock:
            runner = self._nodes.get(node)
            if runner is None:
                runner = self._nodes[node] = self._runner_for(node)
                for source in self._sources:
                    runner.script(source)
            return runner

    def close(self) -> None:
        with self._nodes_lock:
            runners, self._nodes = list(self._nodes.values()), {}
        for runner in runners:
            runner.close()
        super().close()

    def run(
        self,
        commands: Sequence[tuple[Any, ...]],
        what: str,
        *,
        timeout: float | None = None,
        allow: Collection[str] = (),
    ) -> list[Any]:
        keys = [key_of(command) for command in commands]
        keyed = [i for i, key in enumerate(keys) if key is not None]
        if not keyed:
            return super().run(commands, what, timeout=timeout, allow=allow)
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if any(self.slots.primary_of(keys[i]) is None for i in keyed):
            self._refresh(deadline=deadline)  # no map yet (the first command), or a slot without a primary
        one_node = self._one_node(keys, keyed)
        if one_node is not None and len(keyed) < len(commands):
            # Keys of one slot with keyless commands (a WAIT for the replicas of those
            # writes): the whole round trip goes to that node, in order.
            return self._on_node(one_node, commands, keys, what, deadline=deadline, allow=allow)
        replies: list[Any] = [None] * len(commands)
        pending: dict[int, Node | None] = dict.fromkeys(keyed)  # index -> an ASK target, if any
        backoff = Backoff(deadline, first=0.02, cap=0.5)
        while True:  # the keyed commands first: a send's copies follow its messages
            self._send_pending(commands, keys, replies, pending, what=what, deadline=deadline, allow=allow)
            if not pending:
                break
            if not backoff.wait():
                done = len(keyed) - len(pending)
                why = f"did not take {len(pending)} command(s) while {what} within {limit} s (its slots were "
                why += "moving or had no primary)"
                if done:  # those are written: the caller must not take the whole for unsent
                    raise BusConnectionError(
                        f"Redis Cluster at {self.address} {why}; {done} other(s) of the same round did run"
                    )
                raise RedisUnreachable(f"Redis Cluster at {self.address} {why}; nothing was sent")
        keyless = [i for i, key in enumerate(keys) if key is None]
        if keyless:
            try:
                got = super().run([commands[i] for i in keyless], what, timeout=timeout, allow=allow)
            except RedisUnreachable as exc:  # the keyed ones ran: this is no "nothing was sent"
                raise BusConnectionError(f"{exc}; the other commands of the same round did run") from None
            for i, reply in zip(keyless, got, strict=True):
                replies[i] = reply
        return replies

    def _one_node(self, keys: Sequence[Any], keyed: list[int]) -> Node | None:
        """The node of every keyed command, when the map puts them all on one."""
        nodes = {self.slots.primary_of(keys[i]) for i in keyed}
        return nodes.pop() if len(nodes) == 1 else None

    def _on_node(
        self,
        node: Node,
        commands: Sequence[tuple[Any, ...]],
        keys: Sequence[Any],
        what: str,
        *,
        deadline: float,
        allow: Collection[str],
    ) -> list[Any]:
        """*commands* in one round trip to *node*; a redirect or an unreachable node (nothing ran
        there) asks for the map again and sends them, all, to where it says."""
        keyed = [i for i, key in enumerate(keys) if key is not None]
        backoff = Backoff(deadline, first=0.02, cap=0.5)
        while True:
            started = time.monotonic()
            budget = max(0.0, min(self.NODE_CONNECT_TIMEOUT, deadline - started))
            try:
                replies = self.node(node).run(commands, what, timeout=budget, allow={*allow, *REDIRECTS})
            except RedisUnreachable:
                replies = None
            moved = [replies is not None and error_code(replies[i]) in REDIRECTS for i in keyed]
            if replies is not None and not any(moved):
                return replies
            if replies is not None and not all(moved):  # keys of one slot: never, but not assumed
                raise BusConnectionError(
                    f"Redis Cluster at {self.address} moved a slot in the middle of {what}; "
                    "some of its commands ran, some did not"
                )
            if not backoff.wait():
                raise RedisUnreachable(
                    f"Redis Cluster at {self.address} did not take {what} in time; nothing was sent"
                )
            self._refresh(started, deadline=deadline)
            node = self._one_node(keys, keyed) or node

    def _send_pending(
        self,
        commands: Sequence[tuple[Any, ...]],
        keys: Sequence[Any],
        replies: list[Any],
        pending: dict[int, Node | None],
        *,
        what: str,
        deadline: float,
        allow: Collection[str],
    ) -> None:
        """One attempt at each pending command, grouped by node; what ran leaves *pending*.

        The map is asked for again at most once a pass, after it: one stale map
        says so for every command.
        """
        started = time.monotonic()
        by_node: dict[Node, list[int]] = {}
        stale = False
        for i, ask_target in pending.items():
            node = ask_target or self.slots.primary_of(keys[i])
            if node is None:
                stale = True
            else:
                by_node.setdefault(node, []).append(i)
        for node, indexes in by_node.items():
            asking = {i for i in indexes if pending[i] is not None}
            batch: list[tuple[Any, ...]] = []
            for i in indexes:
                batch += [("ASKING",), commands[i]] if i in asking else [commands[i]]
            budget = max(0.0, min(self.NODE_CONNECT_TIMEOUT, deadline - time.monotonic()))
            try:
                got = self.node(node).run(batch, what, timeout=budget, allow={*allow, *REDIRECTS})
            except RedisUnreachable:  # nothing was sent: a failover, perhaps
                stale = True
                continue
            answers = iter(got)
            for i in indexes:
                if i in asking:
                    next(answers)  # ASKING's OK
                stale |= self._settle(i, next(answers), replies, pending)
        if stale:
            self._refresh(started, deadline=deadline)

    @staticmethod
    def _settle(i: int, reply: Any, replies: list[Any], pending: dict[int, Node | None]) -> bool:
        """Note command *i*'s *reply*: its result, or where to send it again; whether the map is stale."""
        code = error_code(reply)
        if code == "ASK":
            pending[i] = redirect_target(reply)
            return False
        if code in REDIRECTS:
            pending[i] = None
            return code == "MOVED"
        replies[i] = reply
        del pending[i]
        return False

    def _refresh(self, since: float | None = None, *, deadline: float | None = None) -> None:
        try:
            self.slots.refresh(since, deadline=deadline)
        except RedisUnreachable:
            self.reachability.failed()


def redirect_target(reply: Exception) -> Node:
    """The node an ``ASK`` (or ``MOVED``) reply names: ``ASK 3999 127.0.0.1:7001``.

    Read from the text: redis-py 5.0's parser makes a plain ``ResponseError``
    of it, without the ``node_addr`` later releases add.
    """
    address = str(reply).split()[-1]
    host, _, port = address.rpartition(":")
    return host, int(port)
