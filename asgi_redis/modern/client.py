"""A synchronous producer for Channels 3/4 deployments that use channels_redis 4.

Django views, Celery tasks and cron jobs can push to channels and groups
without ``async_to_sync``: no event loop, no thread per call, one pooled
connection set per client. Messages land in Redis exactly where and how
channels_redis 4.3 puts them (see :mod:`asgi_redis.modern.wire`), so its
unmodified consumers receive them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import msgpack

from .. import errors, spec
from ..keyspace import glob_escape, scan_batches
from ..scripts import LuaScript, load_script
from . import wire
from .hosts import HostClients, decode_hosts, make_client
from .settings import Producer, producer_from_settings

logger = logging.getLogger(__name__)

try:  # so code written against channels' own exception keeps catching ours
    from channels.exceptions import ChannelFull as _ChannelsChannelFull
except ImportError:  # channels is optional for a pure producer
    _ChannelsChannelFull = Exception  # type: ignore[assignment, misc]


class ChannelFull(errors.ChannelFull, _ChannelsChannelFull):  # type: ignore[misc, valid-type]
    """The channel holds its capacity of messages; nothing was queued.

    Also a ``channels.exceptions.ChannelFull`` when Channels is installed.
    """


def _load(name: str) -> LuaScript:
    return load_script(__name__.rpartition(".")[0], name)


DELIVER = _load("deliver")
GROUP_MEMBERS = _load("group_members")
GROUP_SEND = _load("group_send")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


class SyncChannelsRedisClient(HostClients):
    """Send to channels_redis 4 channels and groups from synchronous code.

    Takes the keywords of ``channels_redis.core.RedisChannelLayer`` (or use
    :meth:`from_settings` on the same ``CHANNEL_LAYERS`` entry). Safe to share
    between threads; after a fork the connection pools reconnect by themselves.
    """

    _lost_reply = "a timed-out send may or may not have been queued"

    def __init__(
        self,
        hosts: Optional[Sequence[Union[str, tuple, Dict[str, Any]]]] = None,
        prefix: str = "asgi",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: Optional[Mapping[Any, int]] = None,
        symmetric_encryption_keys: Optional[Sequence[Union[str, bytes]]] = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
    ):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {prefix!r}")
        self.prefix = prefix
        self.expiry = _positive_int("expiry", expiry)
        self.group_expiry = _positive_int("group_expiry", group_expiry)
        self.capacity = _positive_int("capacity", capacity)
        self.channel_capacity = spec.CapacityTable(self.capacity, channel_capacity)
        self.hosts = decode_hosts(hosts)
        self._codec = wire.MessageCodec(serializer_format, symmetric_encryption_keys,
                                        random_prefix_length, self.expiry)
        self._clients = [make_client(entry) for entry in self.hosts]
        # Normal channels rotate over the shards, as channels_redis senders and
        # receivers both do; the lock keeps the rotation fair across threads.
        self._rotation = itertools.cycle(range(len(self._clients)))
        self._rotation_lock = threading.Lock()

    @classmethod
    def from_settings(cls, alias: str = "default",
                      channel_layers: Optional[Mapping[str, Any]] = None) -> Producer:
        """The producer for the ``CHANNEL_LAYERS[alias]`` entry the async side uses.

        ``channel_layers`` defaults to Django's ``settings.CHANNEL_LAYERS``. The
        ``BACKEND`` decides: this class for channels_redis's core layer, a
        :class:`~asgi_redis.modern.pubsub.SyncPubSubClient` for its pub/sub layer
        (see :mod:`asgi_redis.modern.settings`).
        """
        return producer_from_settings(alias, channel_layers, core_class=cls)

    # -- the channel layer API, synchronous ---------------------------------

    def send(self, channel: str, message: Dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``, or raise :class:`ChannelFull`. One round trip."""
        wire.check_channel_name(channel)
        self._check_message(message)
        if "!" in channel:
            # channels_redis's own send() hashes the full name here, which with
            # several hosts misses the shard its receivers and group_send use
            # (the non-local name); we use theirs so the message is received.
            message = {**message, wire.CHANNEL_FIELD: channel}
            index = wire.shard_of(wire.non_local_name(channel), len(self._clients))
        else:
            with self._rotation_lock:
                index = next(self._rotation)
        key = wire.channel_key(self.prefix, channel)
        capacity = self.channel_capacity.for_channel(channel)
        body = self._codec.encode(message)
        with self._host(index) as client:
            full = DELIVER(client, [key], [body, capacity, *self._message_clock()])
        if full:
            raise ChannelFull(f"channel {channel!r} already holds its capacity of {capacity} messages")

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (refreshing its membership time). One round trip."""
        wire.check_group_name(group)
        wire.check_channel_name(channel)
        key = wire.group_key(self.prefix, group)
        with self._host(self._group_shard(group)) as client:
            pipeline = client.pipeline(transaction=False)
            pipeline.zadd(key, {channel: time.time()})
            pipeline.expire(key, self.group_expiry)
            pipeline.execute()

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; not an error if it was not there."""
        wire.check_group_name(group)
        wire.check_channel_name(channel)
        with self._host(self._group_shard(group)) as client:
            client.zrem(wire.group_key(self.prefix, group), channel)

    def group_send(self, group: str, message: Dict[str, Any]) -> None:
        """Queue ``message`` on every channel of ``group``; full channels are skipped.

        One round trip on a single plain (unencrypted) Redis; otherwise one to
        read the members plus one per shard that holds member channels.
        """
        wire.check_group_name(group)
        self._check_message(message)
        if len(self._clients) == 1 and self._codec.splicable and not self.channel_capacity.patterned:
            self._group_send_in_redis(group, message)
        else:
            self._group_send_in_two_steps(group, message)

    def flush(self) -> None:
        """Delete every key under ``prefix`` on every shard, as channels_redis's flush does."""
        pattern = glob_escape(self.prefix) + "*"
        for index in range(len(self._clients)):
            with self._host(index) as client:
                for batch in scan_batches(client, pattern, 1000):
                    client.delete(*batch)

    # -- internals ------------------------------------------------------------

    def _group_send_in_redis(self, group: str, message: Dict[str, Any]) -> None:
        head, tail = self._codec.splice_parts(message)
        group_cutoff = int(time.time()) - self.group_expiry
        now, cutoff, expiry = self._message_clock()
        args = [group_cutoff, now, cutoff, expiry, self.capacity, self.prefix,
                self._codec.format, self._codec.nonce(), head, tail]
        with self._host(0) as client:
            members, full = GROUP_SEND(client, [wire.group_key(self.prefix, group)], args)
        if full:
            logger.info("%s of %s channels over capacity in group %s", full, members, group)

    def _group_send_in_two_steps(self, group: str, message: Dict[str, Any]) -> None:
        group_cutoff = int(time.time()) - self.group_expiry
        with self._host(self._group_shard(group)) as client:
            packed = GROUP_MEMBERS(client, [wire.group_key(self.prefix, group)], [group_cutoff])
        names = msgpack.unpackb(packed) or []  # an empty Lua table packs as an empty map
        channels_by_key: Dict[str, List[str]] = defaultdict(list)
        prefix = self.prefix
        for channel in names:  # wire.channel_key inlined: this loop is hot for big groups
            bang = channel.find("!")
            channels_by_key[prefix + (channel if bang < 0 else channel[: bang + 1])].append(channel)
        by_shard: Dict[int, List[str]] = defaultdict(list)
        for key in channels_by_key:
            by_shard[wire.shard_of(key[len(prefix):], len(self._clients))].append(key)
        full = 0
        for index, keys in by_shard.items():
            bodies = [self._codec.encode({**message, wire.CHANNEL_FIELD: channels_by_key[key]})
                      for key in keys]
            capacities = [self.channel_capacity.for_channel(channels_by_key[key][0])
                          for key in keys]
            with self._host(index) as client:
                full += len(DELIVER(client, keys, [*bodies, *capacities, *self._message_clock()]))
        if full:
            logger.info("%s of %s channels over capacity in group %s", full, len(names), group)

    def _message_clock(self) -> List[Any]:
        """``[now, stale cutoff, expiry]`` with channels_redis's rounding."""
        now = time.time()
        return [now, int(now) - self.expiry, self.expiry]

    def _group_shard(self, group: str) -> int:
        return wire.shard_of(group, len(self._clients))

    @staticmethod
    def _check_message(message: Any) -> None:
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        if wire.CHANNEL_FIELD in message:
            raise ValueError(f"message must not contain the reserved key {wire.CHANNEL_FIELD!r}")
