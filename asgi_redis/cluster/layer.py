"""RedisClusterChannelLayer: the ASGI 1.0 channel layer on a Redis Cluster.

It is :class:`asgi_redis.core.RedisChannelLayer` with three parts swapped:

* the key layout is the compact layout with one slot per call and buckets
  for normal channels (:mod:`asgi_redis.cluster.layout`);
* the "shards" are the cluster's 16,384 hash slots (:class:`SlotShards`):
  shard ``i`` is slot ``i``, served by whichever master owns it now, so the
  core's shard indices never go stale when slots move or a replica is
  promoted;
* every call the core runs goes through the :class:`ClusterRouter` (MOVED,
  ASK, TRYAGAIN followed; one write per master), and so do the receive
  engine's pops and BLPOPs, through :class:`SlotClient`.

The receive engine and the core's send, group and statistics code are used
unchanged.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import redis
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

from .. import exhaustion, spec
from ..connections import ShardSet
from ..core import DEFAULT_MAX_MESSAGE_SIZE, RedisChannelLayer
from ..errors import LayerConnectionError
from ..keyspace import scan_batches
from ..layouts.base import Layout, LayoutSettings
from ..receive.port import Target
from ..scripts import LuaScript, Operation
from .keyslot import SLOT_COUNT, key_slot
from .layout import DEFAULT_BUCKETS, ClusterLayout
from .nodes import describe_node
from .router import ClusterRouter, SlotCommand

Message = Dict[str, Any]
RESCUE_INTERVAL = 2.0  # seconds between two looks at every bucket (see cluster/layout.py)
WAIT_RETRY_PAUSE = 0.1  # seconds between two tries of a blocked receive's failed wait (failover)
# commands a SlotClient sends to its node as they are: they name no key (the
# multi-server wait's CLIENT UNBLOCK, SCRIPT LOAD, SCAN of a sweep)
_NODE_COMMANDS = frozenset({"CLIENT", "SCRIPT", "SCAN", "INFO", "PING", "DBSIZE", "TYPE"})


class SlotClient:
    """What the receive engine sees as the client of shard ``slot``: the calls it
    makes (EVALSHA, BLPOP) go through the router, anything else (the connection
    pool of a multi-server wait, CLIENT UNBLOCK, SCAN) to the slot's owner now."""

    __slots__ = ("router", "slot")

    def __init__(self, router: ClusterRouter, slot: int):
        self.router = router
        self.slot = slot

    def node(self) -> redis.Redis:
        return self.router.client(self.router.owner(self.slot))

    @property
    def connection_pool(self) -> Any:
        return self.node().connection_pool

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        script = self.router.scripts.get(sha)
        if script is not None:  # known: the router loads it wherever it is missing (ASK target too)
            keys, args = keys_and_args[:numkeys], keys_and_args[numkeys:]
            return self.router.run_one((script, keys, args), "receive")
        return self.router.run_one(SlotCommand(("EVALSHA", sha, numkeys, *keys_and_args), self.slot), "receive")

    def script_load(self, source: bytes) -> Any:
        # told after a NOSCRIPT: from now on the router runs this script by itself
        script = LuaScript("loaded", source)
        self.router.scripts.setdefault(script.sha, script)
        return self.node().script_load(source)

    def blpop(self, keys: Sequence[Any], timeout: float = 0) -> Any:
        return self.router.run_one(SlotCommand(("BLPOP", *keys, timeout), self.slot), "receive")

    def execute_command(self, *args: Any, **options: Any) -> Any:
        # the layout's plain pops (LPOP, LMPOP) follow MOVED and ASK like its scripts
        if str(args[0]).upper() in _NODE_COMMANDS or options:
            return self.node().execute_command(*args, **options)
        return self.router.run_one(SlotCommand(tuple(args), self.slot), "receive")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node(), name)


class SlotShards(ShardSet):
    """The cluster's hash slots as the core's shards: ``client(slot)`` serves ``slot``."""

    def __init__(self, router: ClusterRouter):
        self.router = router
        self._clients: Dict[int, SlotClient] = {}

    def __len__(self) -> int:
        return SLOT_COUNT

    def client(self, index: int) -> Any:
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = SlotClient(self.router, index)
        return client

    def clients(self) -> List[Any]:
        return [self.client(slot) for slot in self.master_slots()]

    def master_slots(self) -> List[int]:
        """One slot per master (its lowest), standing for that master in sweeps."""
        current = self.router.slot_map
        return sorted({current.first_slot_of_owner(first) for first, _, _ in current.ranges()})

    def canonical(self, slot: int) -> int:
        """The slot standing for the master that owns ``slot`` (batches per master)."""
        return self.router.slot_map.first_slot_of_owner(slot)

    def describe(self, index: int) -> str:
        current = self.router.cached_map
        owner = current.owner(index) if current is not None else None
        where = describe_node(owner) if owner else "(no master)"
        return f"Cluster node {where} (hash slot {index})"

    def connection_failed(self, index: int) -> None:
        self.router.mark_stale()

    def close(self) -> None:
        self.router.close()


class _ClusterGuard:
    """The core's guard, plus the cluster's own refusals as LayerConnectionError: a
    MOVED / ASK / TRYAGAIN / CLUSTERDOWN / UNBLOCKED reply read by a multi-server
    wait (which talks to the nodes' connections directly): nothing was popped."""

    __slots__ = ("inner", "shards", "index", "action")

    def __init__(self, inner: Any, shards: SlotShards, index: int, action: str):
        self.inner, self.shards, self.index, self.action = inner, shards, index, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if kind is not None and issubclass(kind, ResponseError) and (
                issubclass(kind, (AskError, TryAgainError, ClusterDownError)) or str(error).startswith("UNBLOCKED")):
            self.shards.router.mark_stale()
            raise LayerConnectionError(
                f"{self.action} failed: {self.shards.describe(self.index)} answered {error!s:.120} "
                "(the cluster is being reconfigured: a slot moved or a failover is under way); nothing was taken"
            ) from error
        return self.inner.__exit__(kind, error, traceback)


class RedisClusterChannelLayer(RedisChannelLayer):
    """ASGI 1.0 channel layer on a Redis (or Valkey) Cluster.

    ``hosts`` are startup nodes: ``redis://`` / ``rediss://`` URLs or
    ``(host, port)`` pairs; one reachable node is enough, the others are
    discovered. The other keywords are the plain layer's; ``buckets`` is how
    many bucket slots normal channels are spread over (the same in every
    process of a site); ``tryagain_timeout`` bounds how long a call waits out
    TRYAGAIN during a migration; ``metrics`` turns on the in-process
    instruments as on the plain layer. The data layout is always the compact one
    (``layout`` accepts only "compact").
    """

    default_hosts: Sequence[Any] = [("localhost", 6379)]
    rescue_interval = RESCUE_INTERVAL
    wait_retry_pause = WAIT_RETRY_PAUSE

    def __init__(
        self,
        expiry: int = 60,
        hosts: Optional[Sequence[Any]] = None,
        prefix: str = "asgi:",
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: Optional[Dict[Any, int]] = None,
        symmetric_encryption_keys: Optional[Sequence[Any]] = None,
        stats_prefix: str = "asgi-meta:",
        connection_kwargs: Optional[Dict[str, Any]] = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        layout: str = "compact",
        buckets: int = DEFAULT_BUCKETS,
        tryagain_timeout: float = 2.0,
        metrics: Any = False,
    ) -> None:
        if layout != "compact":
            raise ValueError(
                f"layout must be 'compact' on a cluster, not {layout!r}: the classic layout's keys "
                "cannot live on a Redis Cluster (a send touches several hash slots)"
            )
        self._buckets = buckets
        self._tryagain_timeout = tryagain_timeout
        self._primaries: Tuple[Any, List[str]] = (None, [])
        self._last_rescue = 0.0
        self._rescue_lock = threading.Lock()
        super().__init__(
            expiry=expiry, hosts=hosts, prefix=prefix, group_expiry=group_expiry, capacity=capacity,
            channel_capacity=channel_capacity, symmetric_encryption_keys=symmetric_encryption_keys,
            stats_prefix=stats_prefix, connection_kwargs=connection_kwargs,
            max_message_size=max_message_size, layout="compact", metrics=metrics,
        )

    # -- the parts swapped into the core ---------------------------------------------

    def _create_layout(self, name: str, settings: LayoutSettings) -> Layout:
        # the compact layout made cluster-ready (__init__ allows no other name); its
        # primary buckets are read from the router's slot map, built next by _create_shards
        return ClusterLayout(settings, self._buckets, self._primary_tags)

    def _create_shards(self, hosts: Optional[Sequence[Any]]) -> ShardSet:
        self.router = ClusterRouter(hosts if hosts is not None else self.default_hosts,
                                    self.connection_kwargs, tryagain_timeout=self._tryagain_timeout)
        self.slots = SlotShards(self.router)
        return self.slots

    def _primary_tags(self) -> List[str]:
        """Each master's first bucket tag, from the current slot map (cached per map)."""
        current = self.router.slot_map
        cached_map, tags = self._primaries
        if cached_map is current:
            return tags
        seen: set = set()
        tags = []
        for tag in self.layout.bucket_tags:
            owner = current.owner(key_slot(tag))
            if owner is not None and owner not in seen:
                seen.add(owner)
                tags.append(tag)
        tags = tags or list(self.layout.bucket_tags)  # no master known: any bucket (calls fail clearly)
        self._primaries = (current, tags)
        return tags

    def _run(self, shards: ShardSet, index: int, action: str, operations: Sequence[Operation]) -> List[Any]:
        """The layout's operations, each to the master owning its keys' slot (one write per master)."""
        with self._guard(shards, index, action):
            return self.router.run(operations, action)

    def _guard(self, shards: ShardSet, index: int, action: str) -> Any:
        return _ClusterGuard(super()._guard(shards, index, action), self.slots, index, action)

    def _route(self, queue: str) -> Tuple[ShardSet, int]:
        # the router sends each call to its slot's owner; the index only groups a
        # send_group's calls per master (one write each) and names it in errors
        return self.slots, self.slots.canonical(key_slot(self.layout.queue_key(queue)))

    def _targets_for(self, queue: str) -> List[Tuple[ShardSet, int]]:
        return [self._route(queue)]

    def _receive_targets(self, names: List[str]) -> List[Target]:
        return self._slot_targets({key for name in names for key in self.layout.receive_keys(name)})

    def _slot_targets(self, keys: Iterable[bytes]) -> List[Target]:
        """Queue keys grouped by slot: one pop / one BLPOP each."""
        by_slot: Dict[int, List[bytes]] = {}
        for key in sorted(keys):
            by_slot.setdefault(key_slot(key), []).append(key)
        return [(self.slots, slot, keys) for slot, keys in by_slot.items()]

    def _sweep(self) -> List[Tuple[ShardSet, int]]:
        return [(self.slots, slot) for slot in self.slots.master_slots()]

    def _wait_goes_on(self, error: LayerConnectionError) -> Optional[float]:
        """A blocked receive whose wait failed waits again after a pause, up to its
        deadline: a connection error, CLUSTERDOWN, UNBLOCKED or a redirection means a
        failover or a resharding is under way, and the slot map read again (now, or at
        the next try) names the master that serves the slot once a replica is promoted.
        The error ends the receive when no node of the cluster answers at all, or when
        this process is out of descriptors or connections (waiting would not help).

        Only a wait is tried again, never a pop (whose lost reply may have held a
        message). A BLPOP whose connection broke may itself have popped a message on
        the server whose reply never arrived: that message is lost, never delivered
        twice (at most once)."""
        if exhaustion.is_exhaustion(error):
            return None
        try:
            self.router.reread()
        except LayerConnectionError:
            return None
        return self.wait_retry_pause

    def _flush_client(self, client: Any) -> int:
        # DEL of several keys must stay within one slot on a cluster
        removed = 0
        for pattern in self.layout.scan_patterns():
            for batch in scan_batches(client, pattern, 1000):
                by_slot: Dict[int, List[bytes]] = {}
                for key in batch:
                    by_slot.setdefault(key_slot(key), []).append(key)
                pipeline = client.pipeline(transaction=False)
                for keys in by_slot.values():
                    pipeline.delete(*keys)
                removed += sum(reply for reply in pipeline.execute(raise_on_error=False) if isinstance(reply, int))
        return removed

    # -- receive: the occasional look at every bucket -----------------------------------

    def receive(self, channels: Iterable[str], block: bool = False) -> Tuple[Optional[str], Optional[Message]]:
        names = spec.validate_channel_list(channels)
        normal = [name for name in names if "?" not in name and "!" not in name]
        if normal and self._rescue_due():
            found = self._rescue(normal)
            if found is not None:
                return found
        return super().receive(names, block)

    def _rescue_due(self) -> bool:
        now = time.monotonic()
        with self._rescue_lock:
            if now - self._last_rescue < self.rescue_interval:
                return False
            self._last_rescue = now
            return True

    def _rescue(self, names: List[str]) -> Optional[Tuple[str, Message]]:
        """One non-blocking look (the layout's pop) at every non-primary bucket of
        ``names``: where a resharding may have left messages (see cluster/layout.py)."""
        primary = {key for name in names for key in self.layout.receive_keys(name)}
        others = {key for name in names for key in self.layout.all_bucket_keys(name)} - primary
        found = self._receive(self._slot_targets(others)).run(False)
        return found if found[0] is not None else None

    def __repr__(self) -> str:
        masters = [describe_node(address) for address in self.router.masters()] if self.router.cached_map else []
        return f"<{type(self).__name__} masters={masters} prefix={self.prefix!r}>"


__all__ = ["RedisClusterChannelLayer", "SlotClient", "SlotShards"]
