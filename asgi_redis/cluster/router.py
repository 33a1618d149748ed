"""Sending script calls and commands to the cluster node that owns their slot.

We route ourselves instead of using redis-py's ``RedisCluster``: it retries
connection errors, timeouts and CLUSTERDOWN up to ten times by default (a
send whose reply was lost would be queued twice), its pipeline refuses
EVALSHA, and it asks ``COMMAND GETKEYS`` for every EVAL. Here every call
names its keys, all in one slot; the calls of one :meth:`ClusterRouter.run`
are grouped by the master owning their slot, each master gets one pipelined
write, and all masters are written before any reply is read, so a run costs
one round trip whatever the number of masters.

What a reply means, and what we do with it, never repeating a call that may
have run:

* ``MOVED slot host:port``: the call did not run; the slot lives elsewhere.
  The map is corrected and refreshed from the cluster (once per run, and only
  if the last refresh is not a moment old), and the call is sent to the owner.
* ``ASK slot host:port``: the slot is being migrated and this key is already
  on the target: the call did not run; it is sent there after ``ASKING``.
* ``TRYAGAIN``: during a migration the call's keys are split between both
  nodes; it did not run; it is sent again after a short pause, for at most
  ``tryagain_timeout`` seconds, then fails with ``LayerConnectionError``.
* ``NOSCRIPT``: the node lacks the script (a fresh or promoted node); it did
  not run; ``SCRIPT LOAD`` goes in front of the call in the next write.
* ``CLUSTERDOWN`` / ``MASTERDOWN`` / ``LOADING``: ``LayerConnectionError``
  (the call did not run, but the cluster cannot serve it now).
* A connection error or timeout: ``LayerConnectionError``. Before anything
  was written the node is unreachable (nothing ran); after the write the call
  may have run, so it is never sent again.

Connection errors and CLUSTERDOWN also mark the map stale: the next run
reads a fresh map first (at most every ``refresh_interval`` seconds), which
is how a promoted replica is found without a restart.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import redis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from .. import checkout, retry
from ..errors import LayerConnectionError
from ..scripts import Command, LuaScript
from .keyslot import key_slot
from .nodes import NodeClients, StartupNode, check_cluster_kwargs, describe_node, parse_startup_nodes
from .slotmap import Address, SlotMap, parse_shards, parse_slots


class SlotCommand(NamedTuple):
    """A command written as given (``("EVALSHA", sha, 1, key)``, ``("BLPOP", key, 1)``),
    sent to the owner of ``slot``."""

    args: Tuple[Any, ...]
    slot: int


# One call: (LuaScript or command name, keys, args) with all keys in one slot
# (a layout's scripts.Call fits); a scripts.Command, routed by its first key
# (``("ZREM", key, member)``); or a SlotCommand.
Call = Union[Tuple[Any, Sequence[Any], Sequence[Any]], Command, SlotCommand]

MAX_REDIRECTS = 5  # MOVED/ASK hops for one call before we call the cluster broken
TRYAGAIN_TIMEOUT = 2.0  # seconds; a migration splits a slot's keys only while MIGRATE runs
TRYAGAIN_PAUSES = (0.005, 0.01, 0.02, 0.05, 0.1)
REFRESH_INTERVAL = 0.1  # seconds between two slot map reads after failures

_NOT_CLUSTER = "cluster support disabled"


class NotACluster(ValueError):
    """A startup node answered, but it is not in cluster mode."""


class _Pending:
    """A call on its way: where it goes next and how it is written."""

    __slots__ = ("index", "call", "slot", "address", "asking", "hops")

    def __init__(self, index: int, call: Call, slot: int, address: Optional[Address]):
        self.index = index
        self.call = call
        self.slot = slot
        self.address = address
        self.asking = False
        self.hops = 0


def call_slot(call: Call) -> int:
    """The slot of ``call``: that of its first key. Every key must share it (the
    layouts name them with one hash tag); a call that breaks this is refused by
    the server (CROSSSLOT, nothing ran), so it is not checked key by key here."""
    if isinstance(call, SlotCommand):
        return call.slot
    if isinstance(call, Command):
        if len(call.args) < 2:
            raise ValueError(f"command {call.args!r} names no key: the cluster cannot route it")
        return key_slot(call.args[1])
    keys = call[1]
    if not keys:
        raise ValueError(f"call {_call_name(call)} names no key: the cluster cannot route it")
    return key_slot(keys[0])


def _call_name(call: Any) -> str:
    if isinstance(call, (Command, SlotCommand)):
        return str(call.args[0])
    return call[0].name if isinstance(call[0], LuaScript) else str(call[0])


def _script(call: Call) -> Optional[LuaScript]:
    if isinstance(call, (Command, SlotCommand)):
        return None
    return call[0] if isinstance(call[0], LuaScript) else None


def _command(call: Call) -> tuple:
    if isinstance(call, (Command, SlotCommand)):
        return tuple(call.args)
    target, keys, args = call
    if isinstance(target, LuaScript):
        return ("EVALSHA", target.sha, len(keys), *keys, *args)
    return (target, *keys, *args)


class ClusterRouter:
    """Routes calls by slot to the cluster's masters, following redirections.

    Thread-safe: the slot map is an immutable snapshot swapped in whole, and
    each node's client has its own connection pool.
    """

    def __init__(self, hosts: Any, connection_kwargs: Optional[Dict[str, Any]] = None,
                 tryagain_timeout: float = TRYAGAIN_TIMEOUT, refresh_interval: float = REFRESH_INTERVAL):
        self.startup: List[StartupNode] = parse_startup_nodes(hosts)
        self.connection_kwargs = check_cluster_kwargs(dict(connection_kwargs or {}))
        self.clients = NodeClients(self.startup, self.connection_kwargs)
        self.tryagain_timeout = tryagain_timeout
        self.refresh_interval = refresh_interval
        self._map: Optional[SlotMap] = None
        self._stale = True
        self._last_refresh = 0.0
        self._refresh_lock = threading.Lock()
        self._use_slots_command = False  # the server has no CLUSTER SHARDS (Redis < 7)
        self.generation = 0  # how many times the map was read (tests and statistics)
        # redirections followed, by kind ("MOVED", "ASK", "TRYAGAIN", "NOSCRIPT"): for tests and figures
        self.redirects: Counter = Counter()
        self.scripts: Dict[str, LuaScript] = {}  # by SHA: scripts a SlotClient was asked to load
        try:
            self.refresh()
        except NotACluster:
            self.close()
            raise
        except LayerConnectionError:
            pass  # no startup node answers yet: the first call reads the map (and fails clearly)

    # -- the slot map ----------------------------------------------------------

    @property
    def slot_map(self) -> SlotMap:
        """The current map, read now if none was read yet (LayerConnectionError if no node answers)."""
        current = self._map
        if current is None or (self._stale and time.monotonic() - self._last_refresh >= self.refresh_interval):
            try:
                return self.refresh()
            except LayerConnectionError:
                if current is None:
                    raise
        return current  # type: ignore[return-value]

    @property
    def cached_map(self) -> Optional[SlotMap]:
        """The map as last read, without reading it (None before the first read)."""
        return self._map

    def refresh(self, unless_newer_than: Optional[int] = None) -> SlotMap:
        """Read the slot map from the first node that answers: known masters, their
        replicas, then the startup nodes. With ``unless_newer_than`` (a
        :attr:`generation`), a map read since then by another thread is kept."""
        with self._refresh_lock:
            if unless_newer_than is not None and self.generation != unless_newer_than and self._map:
                return self._map
            started = time.monotonic()
            failures: List[str] = []
            for address in self._map_sources():
                try:
                    new_map = self._read_map(address)
                except NotACluster:
                    raise
                except (redis.ConnectionError, redis.TimeoutError, ResponseError, OSError) as error:
                    failures.append(f"{describe_node(address)}: {error}")
                    continue
                self._map, self._stale, self._last_refresh = new_map, False, started
                self.generation += 1
                return new_map
            self._last_refresh = started
            raise LayerConnectionError(
                "no Redis Cluster node answered for the slot map: " + "; ".join(failures)
            )

    def _map_sources(self) -> List[Address]:
        sources = self._map.nodes() if self._map is not None else []
        for node in self.startup:
            if node.address not in sources:
                sources.append(node.address)
        return sources

    def _read_map(self, address: Address) -> SlotMap:
        client = self.clients.get(address)
        tls = self.startup[0].tls
        if not self._use_slots_command:
            try:
                return parse_shards(client.execute_command("CLUSTER", "SHARDS"), address[0], tls)
            except ResponseError as error:
                self._check_cluster(address, error)
                if "unknown subcommand" not in str(error).lower():
                    raise
                self._use_slots_command = True
        try:
            return parse_slots(client.execute_command("CLUSTER", "SLOTS"), address[0])
        except ResponseError as error:
            self._check_cluster(address, error)
            raise

    def _check_cluster(self, address: Address, error: ResponseError) -> None:
        if _NOT_CLUSTER in str(error).lower():
            raise NotACluster(
                f"Redis at {describe_node(address)} is not in cluster mode ({error}); "
                "use asgi_redis.RedisChannelLayer for a standalone server"
            ) from None

    def _moved(self, slot: int, address: Address) -> None:
        current = self._map
        if current is not None and current.owner(slot) != address:
            self._map = current.moved(slot, address)
        self._stale = True  # a MOVED means more may have moved: read the whole map next

    def reread(self) -> SlotMap:
        """The map read again (after a failed wait), unless it was read less than
        ``refresh_interval`` ago; LayerConnectionError when no node answers."""
        current = self._map
        if current is not None and time.monotonic() - self._last_refresh < self.refresh_interval:
            self._stale = True  # read it at the next call that comes after the interval
            return current
        return self.refresh()

    def mark_stale(self) -> None:
        """Read the map again before the next call (after a node failed)."""
        self._stale = True

    def masters(self) -> List[Address]:
        """Every master owning slots, for sweeps (flush, statistics, the CLI)."""
        return self.slot_map.masters()

    def owner(self, slot: int) -> Address:
        """The master that serves ``slot`` now; LayerConnectionError if none does."""
        address = self.slot_map.owner(slot)
        if address is None:
            self._stale = True
            raise LayerConnectionError(f"no Redis Cluster master serves hash slot {slot} (CLUSTERDOWN)")
        return address

    def client(self, address: Address) -> redis.Redis:
        """The pooled client of one node (at-most-once retry policy installed)."""
        return self.clients.get(address)

    # -- running calls -------------------------------------------------------

    def run(self, calls: Sequence[Call], action: str = "call", raise_on_error: bool = True) -> List[Any]:
        """Run ``calls`` on the masters owning their slots; replies in call order.

        With ``raise_on_error`` the first failed call's error is raised once
        every reply is in; otherwise failed calls hold their exception
        (``LayerConnectionError`` or a redis ``ResponseError``) in the list, so
        the caller keeps what the other calls returned (a popped message).
        """
        current = self.slot_map
        generation = self.generation
        results: List[Any] = [None] * len(calls)
        pending = []
        for index, call in enumerate(calls):
            slot = call_slot(call)
            pending.append(_Pending(index, call, slot, current.owner(slot)))
        tryagain_deadline: Optional[float] = None
        pauses = iter(TRYAGAIN_PAUSES)
        preload: Dict[Address, List[LuaScript]] = {}
        while pending:
            for item in pending:
                if item.address is None:
                    self._stale = True
                    results[item.index] = LayerConnectionError(
                        f"{action} failed: no Redis Cluster master serves hash slot {item.slot} (CLUSTERDOWN)"
                    )
            replies = self._write_and_read([item for item in pending if item.address is not None], preload, action)
            preload = {}
            again: List[_Pending] = []
            waiting: List[_Pending] = []
            moved = False
            for item, reply in replies:
                if isinstance(reply, (AskError, NoScriptError, TryAgainError)):
                    kind = "MOVED" if isinstance(reply, MovedError) else "ASK" if isinstance(reply, AskError) \
                        else "NOSCRIPT" if isinstance(reply, NoScriptError) else "TRYAGAIN"
                    self.redirects[kind] += 1
                if isinstance(reply, MovedError):
                    moved = True
                    self._moved(item.slot, self._redirect_address(reply, item))
                    item.address, item.asking = self._redirect_address(reply, item), False
                elif isinstance(reply, AskError):
                    item.address, item.asking = self._redirect_address(reply, item), True
                elif isinstance(reply, NoScriptError) and _script(item.call) is not None:
                    scripts = preload.setdefault(item.address, [])  # type: ignore[arg-type]
                    if _script(item.call) not in scripts:
                        scripts.append(_script(item.call))  # type: ignore[arg-type]
                    again.append(item)
                    continue
                elif isinstance(reply, TryAgainError):
                    waiting.append(item)
                    continue
                elif getattr(reply, "nothing_sent", False) and self._owner_changed(item, generation):
                    generation = self.generation  # the node is gone, the slot has another owner:
                    item.address, item.asking = self.cached_map.owner(item.slot), False  # nothing ran
                else:
                    results[item.index] = self._outcome(reply, item, action)
                    continue
                item.hops += 1
                if item.hops > MAX_REDIRECTS:
                    results[item.index] = LayerConnectionError(
                        f"{action} failed: hash slot {item.slot} was redirected {item.hops} times "
                        f"(last to {describe_node(item.address)}): the cluster is being reconfigured"
                    )
                else:
                    again.append(item)
            if moved:
                self._refresh_after_moved(generation)
                generation = self.generation
            if waiting:
                now = time.monotonic()
                if tryagain_deadline is None:
                    tryagain_deadline = now + self.tryagain_timeout
                if now >= tryagain_deadline:
                    for item in waiting:
                        results[item.index] = LayerConnectionError(
                            f"{action} failed: hash slot {item.slot} is being migrated and its keys were "
                            f"split between nodes for {self.tryagain_timeout} s (TRYAGAIN)"
                        )
                else:
                    time.sleep(min(next(pauses, TRYAGAIN_PAUSES[-1]), max(0.0, tryagain_deadline - now)))
                    again += waiting
            pending = again
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def run_one(self, call: Call, action: str = "call") -> Any:
        """:meth:`run` for a single call; raises its error."""
        return self.run([call], action)[0]

    def _owner_changed(self, item: _Pending, generation: int) -> bool:
        """After a node could not even be connected to: whether a map read now (at most
        every refresh_interval) gives the slot another owner, so the call can go there."""
        if item.asking or time.monotonic() - self._last_refresh < self.refresh_interval:
            return False
        try:
            new_map = self.refresh(unless_newer_than=generation)
        except LayerConnectionError:
            return False
        owner = new_map.owner(item.slot)
        return owner is not None and owner != item.address

    def _refresh_after_moved(self, generation: int) -> None:
        # the first MOVED since the map this run started from was read: read it
        # again (several threads hit by the same move read it once)
        try:
            self.refresh(unless_newer_than=generation)
        except LayerConnectionError:
            pass  # keep the corrected map; the next call tries again

    def _redirect_address(self, reply: AskError, item: _Pending) -> Address:
        host = reply.host or (item.address[0] if item.address else "")
        return (host, int(reply.port))

    def _outcome(self, reply: Any, item: _Pending, action: str) -> Any:
        """What the caller gets for a reply that needs no resend."""
        if not isinstance(reply, Exception):
            return reply
        where = describe_node(item.address) if item.address else "?"
        if isinstance(reply, LayerConnectionError):
            self._stale = True
            return reply
        if isinstance(reply, ClusterDownError):  # MASTERDOWN included
            self._stale = True
            return _wrap(f"{action} failed: Redis Cluster node {where} cannot serve hash slot {item.slot} "
                         f"now (CLUSTERDOWN: {reply}); a failover is probably under way", reply)
        if isinstance(reply, BusyLoadingError):
            return _wrap(f"{action} failed: Redis Cluster node {where} is loading its data ({reply})", reply)
        if isinstance(reply, ResponseError) and str(reply).startswith("UNBLOCKED"):
            # a BLPOP ended because the node stopped being a master: nothing was popped
            self._stale = True
            return _wrap(f"{action} failed: Redis Cluster node {where} stopped serving hash slot "
                         f"{item.slot} ({reply}); a failover is probably under way", reply)
        return reply

    def _write_and_read(self, items: List[_Pending], preload: Dict[Address, List[LuaScript]],
                        action: str) -> List[Tuple[_Pending, Any]]:
        """One pipelined write per node, all written before any is read."""
        if len(items) == 1 and not preload:
            return self._write_and_read_one(items[0], action)
        batches: Dict[Address, List[_Pending]] = {}
        for item in items:
            batches.setdefault(item.address, []).append(item)  # type: ignore[arg-type]
        sent = []
        out: List[Tuple[_Pending, Any]] = []
        for address, batch in batches.items():
            commands: List[tuple] = [("SCRIPT", "LOAD", script.source) for script in preload.get(address, [])]
            skip = len(commands)
            for item in batch:
                if item.asking:
                    commands.append(("ASKING",))
                commands.append(_command(item.call))
            pool = self.clients.get(address).connection_pool
            connection = None
            try:
                connection, from_idle = checkout.take(pool)  # connects (with the policy's one retry) if needed
                connection.send_packed_command(connection.pack_commands(commands))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                if connection is not None:
                    connection.disconnect()
                    checkout.give_back(pool, connection, from_idle)
                failure = self._connection_failure(action, address, error, written=connection is not None)
                out += [(item, failure) for item in batch]
                continue
            sent.append((address, batch, pool, (connection, from_idle), skip))
        for address, batch, pool, held, skip in sent:
            out += self._read_batch(address, batch, pool, held, skip, action)
        return out

    def _write_and_read_one(self, item: _Pending, action: str) -> List[Tuple[_Pending, Any]]:
        """The same for one call (the common case: a send, a pop), without the batching."""
        address = item.address
        pool = self.clients.get(address).connection_pool  # type: ignore[arg-type]
        connection = None
        try:
            connection, from_idle = checkout.take(pool)
            command = _command(item.call)
            packed = (connection.pack_commands([("ASKING",), command]) if item.asking
                      else connection.pack_command(*command))
            connection.send_packed_command(packed)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            if connection is not None:
                connection.disconnect()
                checkout.give_back(pool, connection, from_idle)
            return [(item, self._connection_failure(action, address, error,  # type: ignore[arg-type]
                                                    written=connection is not None))]
        return self._read_batch(address, [item], pool, (connection, from_idle), 0, action)  # type: ignore[arg-type]

    def _read_batch(self, address: Address, batch: List[_Pending], pool: Any, held: Tuple[Any, bool],
                    skip: int, action: str) -> List[Tuple[_Pending, Any]]:
        connection, from_idle = held
        out: List[Tuple[_Pending, Any]] = []
        try:
            try:
                for _ in range(skip):
                    _read(connection)  # SCRIPT LOAD: an error shows again as NOSCRIPT below
                for item in batch:
                    if item.asking:
                        _read(connection)
                    out.append((item, _read(connection)))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                connection.disconnect()
                failure = self._connection_failure(action, address, error, written=True)
                out += [(item, failure) for item in batch[len(out):]]
        finally:
            checkout.give_back(pool, connection, from_idle)
        return out

    def _connection_failure(self, action: str, address: Address, error: BaseException,
                            written: bool) -> LayerConnectionError:
        self._stale = True
        if isinstance(error, redis.TimeoutError):
            state = "did not answer in time"
        elif written and not retry.nothing_sent(error):
            state = "failed after the command was sent (it may have run)"
        else:
            state = "is unreachable"
        failure = _wrap(f"{action} failed: Redis Cluster node {describe_node(address)} {state}: {error}", error)
        failure.nothing_sent = not written or retry.nothing_sent(error)  # type: ignore[attr-defined]
        return failure

    def run_on(self, address: Address, *command: Any) -> Any:
        """One command on one node (SCAN, INFO, ...), through its client; errors as
        LayerConnectionError naming the node."""
        try:
            return self.clients.get(address).execute_command(*command)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._connection_failure(str(command[0]), address, error,
                                           written=not retry.nothing_sent(error)) from error

    def close(self) -> None:
        self.clients.close()


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except ResponseError as error:
        return error


def _wrap(message: str, cause: BaseException) -> LayerConnectionError:
    error = LayerConnectionError(message)
    error.__cause__ = cause
    return error

__all__ = ["Call", "ClusterRouter", "NotACluster", "SlotCommand", "call_slot"]
