"""RedisChannelLayer: the ASGI 1.0 channel layer over sharded Redis.

By default wire-compatible with asgi_redis 1.4.3 (its data layout, key by
key, is in docs/layout.md), so old and new processes can share one Redis
during a rolling upgrade. Where keys go and which scripts run is the key
layout's business (``asgi_redis/layouts/``); this module routes calls to
shards and runs what the layout asks. Every hot path is one Lua script per
shard: send 1 round trip, non-blocking receive 1 per shard asked,
send_group 1 to read the group plus 1 per shard written.
"""

from __future__ import annotations

import itertools
import logging
import random
import string
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import redis

from . import exhaustion, retry, scripts, spec
from .connections import HostShards, ShardSet, check_connection_kwargs, parse_hosts
from .errors import ChannelFull, ChannelLayerError, LayerConnectionError, MessageTooLarge
from .extensions import ExtensionsMixin
from .keyspace import scan_batches
from .layouts import get_layout
from .layouts.base import GroupEntry, Layout, LayoutSettings, Operation, Popped
from .metrics import instrument, instruments_for
from .receive import Receive, ServerQuirks
from .receive.port import Found, Target
from .serializers import EncryptedSerializer, MsgpackSerializer, UndecodableMessage

logger = logging.getLogger("asgi_redis")

Message = Dict[str, Any]
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
_FLUSH_BATCH = 1000  # keys per SCAN reply and per DEL in a flush
_TARGETS_CACHED = 1024  # channel lists whose receive targets are remembered
_random = random.SystemRandom()


class RedisChannelLayer(ExtensionsMixin):
    """ASGI 1.0 channel layer backed by one or more Redis servers.

    Configure it with the keywords documented in README.rst (Configuration),
    either directly or through Django's ``CHANNEL_LAYERS[...]["CONFIG"]``.
    ``layout`` picks the key layout ("classic", 1.4.3's, is the default;
    see docs/layout.md).
    """

    ChannelFull = ChannelFull
    MessageTooLarge = MessageTooLarge

    default_hosts: Sequence[Any] = [("localhost", 6379)]
    blpop_timeout = 5  # seconds a blocking receive waits before (None, None)
    shard_poll_interval = 0.02  # per-shard BLPOP slice when servers cannot cancel a wait (Redis < 5)
    global_stats_key = "#global#"  # the classic layout's global statistics name (the CLI reads it)
    new_channel_suffix_length = 12
    # told (shard description, action) of every LayerConnectionError; the metrics set it
    _connection_error_hook: Optional[Callable[[str, str], None]] = None

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
        layout: str = "classic",
        metrics: Any = False,
    ) -> None:
        get_layout(layout)  # an unknown name is refused before anything else is checked
        self.expiry = spec.check_positive_int("expiry", expiry)
        self.group_expiry = spec.check_positive_int("group_expiry", group_expiry)
        self.capacity = spec.check_positive_int("capacity", capacity)
        self.max_message_size = spec.check_positive_int("max_message_size", max_message_size)
        self.channel_capacity = spec.CapacityTable(capacity, channel_capacity)
        self.prefix = _check_prefix("prefix", prefix)
        self.stats_prefix = _check_prefix("stats_prefix", stats_prefix)
        if self.prefix.startswith(self.stats_prefix) or self.stats_prefix.startswith(self.prefix):
            raise ValueError(
                f"prefix {prefix!r} and stats_prefix {stats_prefix!r} overlap; "
                "flush() and statistics need them distinct"
            )
        self.connection_kwargs = check_connection_kwargs(connection_kwargs)
        self.serializer: Any = MsgpackSerializer()
        if symmetric_encryption_keys is not None:
            # 1.4.3 accepted bodies up to 10 s older than expiry; so do we
            self.serializer = EncryptedSerializer(
                self.serializer, symmetric_encryption_keys, ttl=self.expiry + 10
            )
        self.layout: Layout = self._create_layout(layout, LayoutSettings(
            self.prefix, self.stats_prefix, self.expiry, self.group_expiry, self.channel_capacity.for_channel
        ))
        self.quirks = ServerQuirks()  # what the servers turned out not to support
        self._receive_port = _ReceivePort(self)
        self._init_extensions()
        self.shards: ShardSet = self._create_shards(hosts)
        # Normal channels may live elsewhere (RedisLocalChannelLayer); by default
        # they are spread over the same shards as everything else.
        self.normal_shards: ShardSet = self._create_normal_shards()
        self._send_turn = itertools.count()
        self._receive_turn = itertools.count()
        # channel lists received on most -> their targets (fixed once the shards are)
        self._targets_cache: Dict[Tuple[str, ...], List[Target]] = {}
        self.undecodable_count = 0
        # in-process instruments (asgi_redis.metrics): off unless asked for, and then
        # put on this object only, so a layer without them runs the plain methods
        self.instruments = instruments_for(metrics)
        if self.instruments is not None:
            instrument(self, self.instruments)

    # -- strategy hooks, replaced by the Sentinel, local and cluster layers ---------

    def _create_layout(self, name: str, settings: LayoutSettings) -> Layout:
        """The key layout called ``name`` (checked by ``get_layout``), built once, before the shards."""
        return get_layout(name)(settings)

    def _create_shards(self, hosts: Optional[Sequence[Any]]) -> ShardSet:
        """The shards for ``?``/``!`` channels and groups."""
        return HostShards(parse_hosts(hosts, self.default_hosts), self.connection_kwargs)

    def _create_normal_shards(self) -> ShardSet:
        """The shards for normal channels (no ``?`` or ``!``)."""
        return self.shards

    # -- ASGI API -----------------------------------------------------------

    @property
    def extensions(self) -> List[str]:
        """Extension names this layer provides."""
        return ["groups", "flush", "statistics", *self._extension_names()]

    def send(self, channel: str, message: Message) -> None:
        """Queue ``message`` on ``channel``. Never blocks.

        Raises ``ChannelFull`` when the channel holds its capacity,
        ``MessageTooLarge`` when the encoded body exceeds ``max_message_size``,
        ``TypeError``/``ValueError`` for a bad name or message.
        """
        spec.validate_channel_name(channel)
        spec.validate_message(message)
        queue = spec.non_local_name(channel)
        if "!" in channel:
            message = dict(message)
            message[spec.RESERVED_KEY] = channel
        calls = self.layout.send_calls([(queue, [self._encode(message, channel)])])
        shards, index = self._route(queue)
        try:
            try:
                replies = self._run(shards, index, "send", calls)
            except LayerConnectionError as error:
                # A normal channel may live on any shard: when this one could not even be
                # connected to, nothing was sent (no duplicate possible), so use the next.
                if spec.is_directed(queue) or len(shards) == 1 or not retry.nothing_sent(error.__cause__):
                    raise
                index = (index + 1) % len(shards)
                replies = self._run(shards, index, "send", calls)
        except Exception:
            self.layout.send_failed(calls)
            raise
        if self.layout.read_send(replies):
            capacity = self.channel_capacity.for_channel(queue)
            raise self.ChannelFull(f"channel {channel!r} is at its capacity of {capacity}")

    def receive(self, channels: Iterable[str], block: bool = False) -> Tuple[Optional[str], Optional[Message]]:
        """Return ``(channel, message)`` for one waiting message, or ``(None, None)``.

        With ``block=True`` it waits up to ``blpop_timeout`` seconds for one.
        """
        names = spec.validate_channel_list(channels)
        if not names:
            return None, None
        return self._receive(self._receive_targets(names)).run(block)

    def receive_many(self, channels: Iterable[str], block: bool = False) -> Tuple[Optional[str], Optional[Message]]:
        """Deprecated alias of :meth:`receive`."""
        warnings.warn("receive_many is deprecated; use receive", DeprecationWarning, stacklevel=2)
        return self.receive(channels, block)

    def new_channel(self, pattern: str) -> str:
        """``pattern`` (ending in ``?``) plus a random suffix naming an unused channel."""
        spec.validate_new_channel_pattern(pattern, self.new_channel_suffix_length)
        while True:
            name = pattern + "".join(
                _random.choices(string.ascii_letters, k=self.new_channel_suffix_length)
            )
            if not self._run(self.shards, self.shard_for(name), "new_channel",
                             [self.layout.new_channel_probe(name)])[0]:
                return name

    # -- groups ---------------------------------------------------------------

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh its membership."""
        spec.validate_group_name(group)
        spec.validate_channel_name(channel)
        self._run(self.shards, self.shard_for(group), "group_add",
                  self.layout.group_add_ops(group, channel, time.time()))

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a non-member is no error."""
        spec.validate_group_name(group)
        spec.validate_channel_name(channel)
        self._run(self.shards, self.shard_for(group), "group_discard",
                  self.layout.group_discard_ops(group, channel))

    def group_channels(self, group: str) -> List[str]:
        """The current members of ``group`` (expired ones pruned)."""
        spec.validate_group_name(group)
        return self._group_members(group)

    def send_group(self, group: str, message: Message) -> None:
        """Send ``message`` to every member; full member channels are skipped."""
        spec.validate_group_name(group)
        spec.validate_message(message)
        plain_body = self._encode(message, f"group {group}")
        self._send_to_members(self._group_members(group), message, plain_body)

    def _send_to_members(self, members: List[str], message: Message, plain_body: bytes) -> int:
        """One script call per shard holding members; the local layer diverts normal ones.
        Returns how many members were full (and skipped)."""
        process_members = [channel for channel in members if "!" in channel]
        if self.layout.fans_out:
            # one entry per process queue naming its members; the receiver fans it out
            named_bodies: Dict[str, Any] = {}
            entries: Dict[str, GroupEntry] = {}
            for channel in process_members:
                queue = spec.non_local_name(channel)
                entry = entries.get(queue)
                if entry is None:
                    entry = entries[queue] = named_bodies[channel] = GroupEntry(plain_body, [])
                else:
                    named_bodies[channel] = None
                entry.channels.append(channel)
        else:
            named_bodies = dict(zip(process_members, self._encode_naming(message, process_members)))
        batches: Dict[Tuple[int, int], Tuple[ShardSet, int, Dict[str, List[Any]]]] = {}
        for channel in members:
            queue = spec.non_local_name(channel)
            body = named_bodies.get(channel, plain_body)
            if "!" in channel and body is None:
                continue  # named by its process's entry
            shards, index = self._route(queue)
            batch = batches.get((id(shards), index))
            if batch is None:
                batch = batches[(id(shards), index)] = (shards, index, {})
            batch[2].setdefault(queue, []).append(body)
        full = 0
        for shards, index, runs in batches.values():
            calls = self.layout.send_calls(list(runs.items()))
            try:
                replies = self._run(shards, index, "send_group", calls)
            except Exception:
                self.layout.send_failed(calls)
                raise
            full += self.layout.read_send(replies)
        return full

    # -- flush and statistics -----------------------------------------------

    def flush(self) -> None:
        """Delete every message, group and statistic under this layer's prefixes."""
        for shards, index in self._sweep():
            with self._guard(shards, index, "flush"):
                self._flush_client(shards.client(index))

    def flush_counts(self) -> Dict[str, int]:
        """Like :meth:`flush`, returning the number of keys removed per shard."""
        counts = {}
        for shards, index in self._sweep():
            with self._guard(shards, index, "flush"):
                counts[shards.describe(index)] = self._flush_client(shards.client(index))
        return counts

    def global_statistics(self) -> Dict[str, int]:
        """``messages_count`` and ``channel_full_count`` summed over every shard."""
        totals = {"messages_count": 0, "channel_full_count": 0}
        for shards, index in self._sweep():
            for name, value in self._shard_global_statistics(shards, index).items():
                totals[name] += value
        return totals

    def _shard_global_statistics(self, shards: ShardSet, index: int) -> Dict[str, int]:
        """The global counters kept on one shard (the exporter reads them shard by shard)."""
        pattern = self.layout.global_stats_pattern()
        operations = self.layout.global_stats_ops()
        if pattern is not None:  # counters spread over keys (one per hash slot): find them
            with self._guard(shards, index, "global_statistics"):
                keys = [key for batch in scan_batches(shards.client(index), pattern) for key in batch]
            operations = self.layout.global_stats_ops(keys)
            if not operations:
                return {}
        return self.layout.read_global_stats(self._run(shards, index, "global_statistics", operations))

    def channel_statistics(self, channel: str) -> Dict[str, int]:
        """Counters, pending messages and oldest age of one channel."""
        spec.validate_channel_name(channel)
        queue = spec.non_local_name(channel)
        stats = {"messages_count": 0, "messages_pending": 0, "messages_max_age": 0, "channel_full_count": 0}
        operations = self.layout.channel_stats_ops(queue)
        for shards, index in self._targets_for(queue):
            replies = self._run(shards, index, "channel_statistics", operations)
            for name, value in self.layout.read_channel_stats(replies).items():
                # the oldest message anywhere is the channel's oldest; the rest add up
                stats[name] = max(stats[name], value) if name == "messages_max_age" else stats[name] + value
        return stats

    def close(self) -> None:
        """Drop pooled connections; the layer reconnects if used again."""
        for shard_set in {id(s): s for s in (self.shards, self.normal_shards)}.values():
            shard_set.close()

    # -- routing --------------------------------------------------------------

    def shard_for(self, name: str) -> int:
        """Index of the shard holding a ``?``/``!`` channel or a group."""
        return self.layout.shard_of(spec.non_local_name(name), len(self.shards))

    def _route(self, queue: str) -> Tuple[ShardSet, int]:
        """Where a send to ``queue`` goes: fixed for ``?``/``!``, in turn for normal ones."""
        if spec.is_directed(queue):
            return self.shards, self.layout.shard_of(queue, len(self.shards))
        return self.normal_shards, next(self._send_turn) % len(self.normal_shards)

    def _targets_for(self, queue: str) -> List[Tuple[ShardSet, int]]:
        """Every shard where messages for ``queue`` may wait."""
        if spec.is_directed(queue):
            return [(self.shards, self.layout.shard_of(queue, len(self.shards)))]
        return [(self.normal_shards, index) for index in range(len(self.normal_shards))]

    def _receive_targets(self, names: List[str]) -> List[Target]:
        """Queue keys to look at, grouped per shard and as the layout lets one pop cover them
        (remembered per channel list: a worker receives on the same list all its life)."""
        key = tuple(names)
        cached = self._targets_cache.get(key)
        if cached is None:
            cached = self._compute_receive_targets(names)
            if len(self._targets_cache) >= _TARGETS_CACHED:
                self._targets_cache.clear()  # lists of single-use ? names must not grow it without end
            self._targets_cache[key] = cached
        return [(shards, index, list(keys)) for shards, index, keys in cached]

    def _compute_receive_targets(self, names: List[str]) -> List[Target]:
        grouped: Dict[Tuple[int, int], Tuple[ShardSet, int, List[bytes]]] = {}
        for name in names:
            for shards, index in self._targets_for(name):
                grouped.setdefault((id(shards), index), (shards, index, []))[2].extend(self.layout.receive_keys(name))
        return [
            (shards, index, keys)
            for shards, index, all_keys in grouped.values()
            for keys in self.layout.group_keys(all_keys)
        ]

    def _receive(self, targets: List[Target], poll: Any = None, poll_interval: float = 0.02) -> Receive:
        """One receive over ``targets``, carried out by the receive engine."""
        return Receive(self._receive_port, targets, next(self._receive_turn), poll, poll_interval)

    def _sweep(self) -> List[Tuple[ShardSet, int]]:
        """Every distinct shard of this layer, for flush and statistics."""
        sets = {id(s): s for s in (self.shards, self.normal_shards)}.values()
        return [(shard_set, index) for shard_set in sets for index in range(len(shard_set))]

    # -- helpers ----------------------------------------------------------------

    def _encode(self, message: Message, where: str) -> bytes:
        return self._check_size(self.serializer.encode(message), where)

    def _check_size(self, body: bytes, where: str) -> bytes:
        if len(body) > self.max_message_size:
            raise self.MessageTooLarge(
                f"message for {where} is {len(body)} bytes encoded, over the "
                f"max_message_size of {self.max_message_size}"
            )
        return body

    def _encode_naming(self, message: Message, channels: List[str]) -> List[bytes]:
        """The bodies of ``message`` naming each ``!`` channel in ``__asgi_channel__``."""
        if not channels:
            return []
        encode = getattr(self.serializer, "encode_naming", None)
        if encode is not None:
            bodies = encode(message, spec.RESERVED_KEY, channels)
        else:
            bodies = [self.serializer.encode({**message, spec.RESERVED_KEY: channel}) for channel in channels]
        for channel, body in zip(channels, bodies):
            self._check_size(body, channel)
        return bodies

    def _group_members(self, group: str) -> List[str]:
        replies = self._run(self.shards, self.shard_for(group), "group read",
                            self.layout.group_members_ops(group, time.time()))
        return self.layout.read_group_members(replies)

    def _group_key(self, group: str) -> str:
        """The key of ``group`` in this layer's layout (the benchmark and CLI read it)."""
        return self.layout.group_key(group)

    def _run(self, shards: ShardSet, index: int, action: str, operations: Sequence[Operation]) -> List[Any]:
        """The layout's operations on one shard, guarded: one call, or one pipeline (1 round trip)."""
        with self._guard(shards, index, action):
            return scripts.run(shards.client(index), operations)

    def _flush_client(self, client: redis.Redis) -> int:
        # SCAN in bounded batches: KEYS (1.4.3) blocks Redis on a large keyspace
        removed = 0
        for pattern in self.layout.scan_patterns():
            for batch in scan_batches(client, pattern, _FLUSH_BATCH):
                removed += client.delete(*batch)
        return removed

    def _decode(self, queue_key: bytes, body: bytes, channel: Optional[str] = None) -> Optional[Tuple[str, Message]]:
        """The ``(channel, message)`` of a popped body, or None when it cannot be decoded.

        ``channel``: the receiving channel when the layout knows it (a fanned-out entry)."""
        if channel is None:
            channel = self.layout.channel_of(queue_key)
        try:
            message = self.serializer.decode(body)
        except UndecodableMessage as error:
            self.undecodable_count += 1
            logger.warning("Dropped a message on channel %s: %s", channel, error)
            return None
        real_channel = message.pop(spec.RESERVED_KEY, None)
        if isinstance(real_channel, str):
            channel = real_channel
        return channel, message

    def _guard(self, shards: ShardSet, index: int, action: str) -> _ConnectionGuard:
        return _ConnectionGuard(shards, index, action, self._connection_error_hook)

    def _wait_goes_on(self, error: LayerConnectionError) -> Optional[float]:
        """Seconds to pause before a blocking receive whose wait failed with ``error``
        waits again, or None (here: always) for the error to end the receive: a
        standalone server that dropped a wait is down or restarting."""
        return None

    def __repr__(self) -> str:
        shards = [self.shards.describe(index) for index in range(len(self.shards))]
        return f"<{type(self).__name__} shards={shards} prefix={self.prefix!r}>"


class _ConnectionGuard:
    """Turns redis-py's connection and timeout errors into LayerConnectionError
    naming the shard, and tells the shard set (Sentinel drops its cached master)."""

    __slots__ = ("shards", "index", "action", "on_error")

    def __init__(self, shards: ShardSet, index: int, action: str,
                 on_error: Optional[Callable[[str, str], None]] = None):
        self.shards, self.index, self.action, self.on_error = shards, index, action, on_error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if kind is not None and issubclass(kind, (redis.ConnectionError, OSError)):
            # out of descriptors, server clients or pool slots: the server is fine (no
            # connection_failed), and the message says which limit to look at
            where = self.shards.describe(self.index)
            reason = exhaustion.explain(error, where, self.shards.client(self.index))
            if reason is not None:
                raise LayerConnectionError(f"{self.action} failed: {reason}") from error
        if kind is not None and issubclass(kind, (redis.ConnectionError, redis.TimeoutError)):
            self._failed()
            raise LayerConnectionError(
                f"{self.action} failed: Redis {self.shards.describe(self.index)} "
                f"{'did not answer in time' if issubclass(kind, redis.TimeoutError) else 'is unreachable'}: {error}"
            ) from error
        if kind is not None and issubclass(kind, redis.ResponseError) and _has_error_code(error, "READONLY"):
            self._failed()
            raise LayerConnectionError(
                f"{self.action} failed: Redis {self.shards.describe(self.index)} is a read-only replica "
                "(a failover is probably under way)"
            ) from error
        if kind is not None and issubclass(kind, redis.ResponseError) and _has_error_code(error, "OOM"):
            raise ChannelLayerError(
                f"{self.action} failed: Redis {self.shards.describe(self.index)} is out of memory "
                "(maxmemory reached and its policy evicts nothing); the write was refused"
            ) from error
        return False

    def _failed(self) -> None:
        self.shards.connection_failed(self.index)
        if self.on_error is not None:
            self.on_error(self.shards.describe(self.index), self.action)


def _has_error_code(error: Exception, code: str) -> bool:
    """Whether a Redis error reply carries ``code``, also when a Lua script wrapped it."""
    # redis-py strips known codes off the text (READONLY -> ReadOnlyError, OOM ->
    # OutOfMemoryError); inside a script the reply reads "Error running script ... -OOM ..."
    by_class = {"READONLY": redis.exceptions.ReadOnlyError, "OOM": redis.exceptions.OutOfMemoryError}
    text = str(error)
    return isinstance(error, by_class[code]) or text.startswith(code + " ") or f"-{code} " in text


def _check_prefix(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, not {value!r}")
    return value


class _ReceivePort:
    """The layer as the receive engine sees it (asgi_redis.receive.port.LayerPort)."""

    __slots__ = ("_layer", "layout", "quirks")

    def __init__(self, layer: RedisChannelLayer) -> None:
        self._layer = layer
        self.layout = layer.layout
        self.quirks = layer.quirks

    @property
    def blpop_timeout(self) -> float:
        return self._layer.blpop_timeout

    @property
    def shard_poll_interval(self) -> float:
        return self._layer.shard_poll_interval

    def guard(self, shards: ShardSet, index: int, action: str) -> _ConnectionGuard:
        return self._layer._guard(shards, index, action)

    def decode(self, popped: Popped) -> Optional[Found]:
        return self._layer._decode(popped.queue_key, popped.body, popped.channel)

    def wait_goes_on(self, error: LayerConnectionError) -> Optional[float]:
        return self._layer._wait_goes_on(error)
