"""What is inside a layer, read with SCAN only (never KEYS, which blocks Redis
for as long as it walks the whole keyspace).

Keys under the layer's prefix are, in 1.4.3's layout: channel queues (lists),
groups (sorted sets at ``<prefix>:group:<name>``) and message bodies
(strings). Each SCAN batch is classified with one pipelined TYPE round trip
and measured with one more, so inspecting never holds Redis for long.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import redis

from .. import spec
from ..core import RedisChannelLayer
from ..keyspace import glob_escape, scan_batches

SCAN_BATCH = 500
KEYS_PER_LISTED = 1000  # inspect looks at most --limit x this many keys per shard
_STATS_SUFFIXES = (":messages_count", ":channel_full_count")


@dataclass
class ChannelInfo:
    name: str
    pending: int
    oldest_age: Optional[float]  # seconds since the oldest queued message was sent


@dataclass
class GroupInfo:
    name: str
    members: int  # live members (within group_expiry)
    stored: int  # members in the sorted set, expired ones included


@dataclass
class ShardContents:
    shard: str
    channels: List[ChannelInfo] = field(default_factory=list)
    groups: List[GroupInfo] = field(default_factory=list)
    bodies: int = 0
    other_keys: int = 0
    scanned: int = 0
    complete: bool = True  # False when --limit stopped the scan early

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def shards_of(layer: RedisChannelLayer) -> List[Tuple[str, redis.Redis]]:
    """``(description, client)`` of every distinct shard of the layer."""
    return [(shards.describe(index), shards.client(index)) for shards, index in layer._sweep()]


def _keys_under(client: redis.Redis, prefix: str, batch: int = SCAN_BATCH) -> Iterator[List[bytes]]:
    """Keys under ``prefix``, a SCAN batch at a time."""
    return scan_batches(client, glob_escape(prefix) + "*", batch=batch)


def inspect_shard(layer: RedisChannelLayer, description: str, client: redis.Redis,
                  limit: int, key_budget: Optional[int] = None) -> ShardContents:
    """Channels (pending, oldest age) and groups (members) on one shard, up to ``limit`` of each;
    the scan stops after ``key_budget`` keys (default ``limit`` x KEYS_PER_LISTED)."""
    contents = ShardContents(shard=description)
    budget = limit * KEYS_PER_LISTED if key_budget is None else key_budget
    compact = layer.layout.name == "compact"
    prefix = layer.layout.key_prefix if compact else layer.prefix  # compact: only its own keys
    group_prefix = f"{prefix}:group:"
    channels: Dict[str, ChannelInfo] = {}
    for keys in _keys_under(client, prefix):
        contents.scanned += len(keys)
        types = _pipelined(client, [("type", key) for key in keys])
        lists, groups = [], []
        for key, kind in zip(keys, types):
            name = key.decode("utf8", "replace")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "list":
                lists.append((key, layer.layout.channel_of(key) if compact else name[len(prefix):]))
            elif kind == "zset" and compact and layer.layout.group_of(key) is not None:
                groups.append((key, layer.layout.group_of(key)))
            elif kind == "zset" and not compact and name.startswith(group_prefix):
                groups.append((key, name[len(group_prefix):]))
            elif kind == "string":
                contents.bodies += 1
            elif kind != "none":  # "none": expired between SCAN and TYPE
                contents.other_keys += 1
        # a cluster keeps a normal channel in a bucket per slot range, and after a resharding
        # in more than one on the same master: each is a queue of its own, listed as one
        for channel in _measure_channels(layer, client, lists):
            _merge_channel(channels, channel)
        contents.groups += _measure_groups(layer, client, groups)
        # enough of both, or a keyspace so large (mostly message bodies) that walking
        # all of it would take long: stop, and say the listing may be partial
        if (len(channels) >= limit and len(contents.groups) >= limit) \
                or contents.scanned >= budget:
            contents.complete = False
            break
    contents.channels = list(channels.values())
    contents.channels.sort(key=lambda channel: (-channel.pending, channel.name))
    contents.groups.sort(key=lambda group: (-group.members, group.name))
    if len(contents.channels) > limit or len(contents.groups) > limit:
        contents.complete = False
    del contents.channels[limit:], contents.groups[limit:]
    return contents


def _merge_channel(channels: Dict[str, ChannelInfo], channel: ChannelInfo) -> None:
    """Add ``channel`` to ``channels``: the pending counts of one name summed, the oldest age kept."""
    known = channels.get(channel.name)
    if known is None:
        channels[channel.name] = channel
        return
    ages = [age for age in (known.oldest_age, channel.oldest_age) if age is not None]
    channels[channel.name] = ChannelInfo(name=channel.name, pending=known.pending + channel.pending,
                                         oldest_age=max(ages) if ages else None)


def _measure_channels(layer: RedisChannelLayer, client: redis.Redis,
                      lists: List[Tuple[bytes, str]]) -> List[ChannelInfo]:
    if not lists:
        return []
    replies = _pipelined(client, [cmd for key, _ in lists for cmd in (("llen", key), ("lindex", key, 0))])
    oldest_keys = [replies[2 * i + 1] for i in range(len(lists))]
    if layer.layout.name == "compact":  # the entry holds its deadline: no body key to ask
        now = time.time()
        ages = [layer.layout.entry_age(entry, now) for entry in oldest_keys]
        return [
            ChannelInfo(name=name, pending=int(replies[2 * i] or 0),
                        oldest_age=None if ages[i] is None else round(ages[i], 3))
            for i, (_, name) in enumerate(lists)
        ]
    ttls = _pipelined(client, [("pttl", key) for key in oldest_keys if key is not None])
    ttls_iter = iter(ttls)
    found = []
    for i, (_, name) in enumerate(lists):
        age = None
        if oldest_keys[i] is not None:
            ttl_ms = next(ttls_iter)
            if ttl_ms is not None and ttl_ms >= 0:
                age = round(max(0.0, layer.expiry - ttl_ms / 1000.0), 3)
        found.append(ChannelInfo(name=name, pending=int(replies[2 * i] or 0), oldest_age=age))
    return found


def _measure_groups(layer: RedisChannelLayer, client: redis.Redis,
                    groups: List[Tuple[bytes, str]]) -> List[GroupInfo]:
    if not groups:
        return []
    oldest_live = time.time() - layer.group_expiry
    replies = _pipelined(
        client, [cmd for key, _ in groups for cmd in (("zcard", key), ("zcount", key, oldest_live, "+inf"))]
    )
    return [
        GroupInfo(name=name, stored=int(replies[2 * i]), members=int(replies[2 * i + 1]))
        for i, (_, name) in enumerate(groups)
    ]


def _pipelined(client: redis.Redis, commands: List[tuple]) -> List[Any]:
    if not commands:
        return []
    pipeline = client.pipeline(transaction=False)
    for name, *args in commands:
        getattr(pipeline, name)(*args)
    return pipeline.execute()


def statistics_channels(layer: RedisChannelLayer, limit: int) -> List[str]:
    """Channel names that have statistics counters or a queue, at most ``limit``."""
    names: Dict[str, None] = {}
    for _, client in shards_of(layer):
        for keys in _keys_under(client, layer.stats_prefix):
            for key in keys:
                parsed = statistics_key_channel(layer, key)
                if parsed is not None:
                    names[parsed[0]] = None
            if len(names) >= limit:
                return sorted(names)[:limit]
        if layer.layout.name == "compact":
            continue  # its counter hashes name every channel it has sent to
        for keys in _keys_under(client, layer.prefix):
            for key, kind in zip(keys, _pipelined(client, [("type", key) for key in keys])):
                name = key.decode("utf8", "replace")[len(layer.prefix):]
                if kind in (b"list", "list") and _is_channel_name(name):
                    names[name] = None
            if len(names) >= limit:
                return sorted(names)[:limit]
    return sorted(names)


def statistics_key_channel(layer: RedisChannelLayer, key: bytes) -> Optional[Tuple[str, Optional[str]]]:
    """``(channel, counter)`` of a per-channel statistics key, None for any other key.

    The classic layout keeps each counter in a string key of its own; the
    compact one keeps both in one hash per queue, given as ``(channel, None)``.
    """
    if layer.layout.name == "compact":
        name = layer.layout.channel_of_stats_key(key)
        return (name, None) if name is not None and _is_channel_name(name) else None
    rest = key.decode("utf8", "replace")[len(layer.stats_prefix):]
    if rest.startswith(layer.global_stats_key + ":"):
        return None
    for suffix in _STATS_SUFFIXES:
        name = rest[: -len(suffix)]
        if rest.endswith(suffix) and _is_channel_name(name):
            return name, suffix[1:]
    return None


def _is_channel_name(name: str) -> bool:
    # another program's keys under the same prefix are not ours to report on
    try:
        spec.validate_channel_name(name)
    except (TypeError, ValueError):
        return False
    return True


def other_layer_prefixes(layer: RedisChannelLayer, max_keys: int = 20000) -> Tuple[List[str], List[str]]:
    """Prefixes and statistics prefixes of other layers on the same Redis, as a
    hint for a mistyped --prefix. Recognised by 1.4.3's key shapes: message
    bodies ``<prefix><32 hex>``, groups ``<prefix>:group:<name>``, global
    counters ``<stats prefix>#global#:messages_count``. Reads key names only,
    at most ``max_keys`` per shard, so a huge keyspace costs little.
    """
    prefixes, stats_prefixes = set(), set()
    marker = f"{layer.global_stats_key}:messages_count"
    for _, client in shards_of(layer):
        for keys in scan_batches(client, "*", batch=1000, key_budget=max_keys):
            for key in keys:
                text = key.decode("utf8", "replace")
                if text.endswith(marker):
                    stats_prefixes.add(text[: -len(marker)])
                elif ":group:" in text:
                    prefixes.add(text.split(":group:", 1)[0])
                elif _BODY_KEY.match(text):
                    prefixes.add(text[:-32])
    prefixes.discard(layer.prefix)
    stats_prefixes.discard(layer.stats_prefix)
    return sorted(prefixes - {""}), sorted(stats_prefixes)


_BODY_KEY = re.compile(r"^.+[0-9a-f]{32}$")
