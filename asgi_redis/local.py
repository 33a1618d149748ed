"""RedisLocalChannelLayer: normal channels on this machine, the rest on Redis.

Most of a Channels 1 deployment's traffic (``http.request``,
``websocket.receive``) is on normal channels, which any worker may consume.
Keeping them on the machine spares the shared Redis that traffic, while
``?``/``!`` reply channels, ``new_channel`` and groups stay on the shared
Redis so every worker can reach every client. asgi_redis 1.4.3 used asgi_ipc
for the local side, which no longer works with msgpack 1.x.

The local side is one of:

- ``local_hosts``: a Redis on this machine (unix socket or loopback). It is
  only another shard set for normal channels (the core's
  ``_create_normal_shards`` hook), so the core's send, non-blocking receive,
  send_group, flush and statistics run unchanged, with the same round trips
  and the same encryption.
- ``local_layer``: any other classic (ASGI 1.0) layer, given built or as a
  dotted import path. Normal-channel calls are handed to it; the routing
  points below are the only overrides.

A blocking receive that involves both sides waits on both at once
(``asgi_redis/receive/waiting.py``), local side first in every look.
"""

from __future__ import annotations

import importlib
import inspect
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import redis

from . import spec
from .connections import HostShards, ShardSet, check_connection_kwargs, parse_hosts
from .core import Message, RedisChannelLayer
from .receive.port import Target

# Extensions the delegation below carries over to a local_layer; the others
# ("twisted", "asyncio") would bypass it, so they are not offered in that mode.
_DELEGATED_EXTENSIONS = ("flush", "statistics")
_NOTHING: Tuple[None, None] = (None, None)
Received = Tuple[Optional[str], Optional[Message]]


class RedisLocalChannelLayer(RedisChannelLayer):
    """Normal channels over a machine-local transport, everything else over Redis.

    Configure exactly one of ``local_hosts`` (recommended: a Redis on this
    machine, e.g. ``["unix:///run/redis/redis.sock"]``) or ``local_layer``
    (another channel layer object, or the dotted path of its class, built with
    this layer's expiry, group_expiry, capacity, channel_capacity and
    encryption keys plus ``local_layer_config``). Other keywords are those of
    :class:`RedisChannelLayer`.

    Normal channels must be consumed on the machine that sends to them; that
    includes normal channels in a group, which ``send_group`` delivers on the
    sender's machine.
    """

    local_poll_interval = 0.02  # seconds between looks at a local_layer during a mixed blocking receive

    def __init__(
        self,
        expiry: int = 60,
        hosts: Optional[Sequence[Any]] = None,
        prefix: str = "asgi:",
        group_expiry: int = 86400,
        capacity: int = 100,
        channel_capacity: Optional[Dict[Any, int]] = None,
        local_hosts: Optional[Sequence[Any]] = None,
        local_layer: Any = None,
        local_layer_config: Optional[Dict[str, Any]] = None,
        local_connection_kwargs: Optional[Dict[str, Any]] = None,
        layout: str = "classic",
        **kwargs: Any,
    ) -> None:
        _check_local_settings(local_hosts, local_layer, local_layer_config, local_connection_kwargs)
        # read by _create_normal_shards, which the core calls from its __init__
        self._local_hosts = local_hosts
        self._local_connection_kwargs = local_connection_kwargs
        self.local_layer: Any = None
        super().__init__(
            expiry=expiry, hosts=hosts, prefix=prefix, group_expiry=group_expiry,
            capacity=capacity, channel_capacity=channel_capacity, layout=layout, **kwargs,
        )
        self._owns_local_layer = isinstance(local_layer, str)
        if local_layer is not None:
            settings = {
                "expiry": self.expiry,
                "group_expiry": self.group_expiry,
                "capacity": self.capacity,
                "channel_capacity": channel_capacity,
            }
            if kwargs.get("symmetric_encryption_keys") is not None:
                settings["symmetric_encryption_keys"] = kwargs["symmetric_encryption_keys"]
            self.local_layer = _build_local_layer(local_layer, {**settings, **(local_layer_config or {})})

    def _create_normal_shards(self) -> ShardSet:
        if self._local_hosts is None:
            return self.shards  # local_layer mode: the core never routes normal channels
        hosts = parse_hosts(self._local_hosts, [], what="local_hosts")
        if self._local_connection_kwargs is None:
            return HostShards(hosts, self.connection_kwargs)
        return _OwnSettingsShards(hosts, check_connection_kwargs(self._local_connection_kwargs))

    @property
    def extensions(self) -> List[str]:
        """What both sides provide; groups live on Redis only, so they need only Redis."""
        own = super().extensions
        if self.local_layer is None:
            return own
        local = set(getattr(self.local_layer, "extensions", ()))
        return [name for name in own if name == "groups" or (name in _DELEGATED_EXTENSIONS and name in local)]

    # -- routing points -------------------------------------------------------------
    # With local_hosts only receive differs from the core; the rest falls through.

    def send(self, channel: str, message: Message) -> None:
        """Queue ``message``; normal channels go to the local transport."""
        spec.validate_channel_name(channel)
        if self.local_layer is None or spec.is_directed(channel):
            return super().send(channel, message)
        spec.validate_message(message)
        with self._local_errors():
            self.local_layer.send(channel, message)

    def receive(self, channels: Iterable[str], block: bool = False) -> Received:
        """Like :meth:`RedisChannelLayer.receive`; a mixed list looks locally first.

        A blocking receive on more than one server (the local Redis and the
        remote one) waits on all of them at once, so a message on either side
        is returned as soon as it arrives. With a ``local_layer``, which cannot
        take part in that wait, the local side is looked at every
        ``local_poll_interval`` seconds meanwhile.
        """
        names = spec.validate_channel_list(channels)
        local: List[str] = []
        if self.local_layer is not None:
            local = [name for name in names if not spec.is_directed(name)]
            names = [name for name in names if spec.is_directed(name)]
            if not names:
                return self.local_layer.receive(local, block=block) if local else _NOTHING
        if not local:
            return super().receive(names, block)
        return self._receive_everywhere(local, self._receive_targets(names), block)

    def _receive_everywhere(
        self, local: List[str], targets: List[Target], block: bool, timeout: Optional[float] = None
    ) -> Received:
        """Non-blocking looks (local first), then one wait on every server at once, until the deadline."""
        poll = (lambda: self.local_layer.receive(local, block=False)) if local else None
        return self._receive(targets, poll, self.local_poll_interval).run(block, timeout)

    def _receive_targets(self, names: List[str]) -> List[Target]:
        # the machine-local Redis first: the cheap look, and what the contract asks
        targets = super()._receive_targets(names)
        return sorted(targets, key=lambda target: target[0] is not self.normal_shards)

    def _send_to_members(self, members: List[str], message: Message, plain_body: bytes) -> int:
        if self.local_layer is None:
            return super()._send_to_members(members, message, plain_body)
        full_errors = (self.ChannelFull, getattr(self.local_layer, "ChannelFull", self.ChannelFull))
        full = 0
        for channel in members:
            if not spec.is_directed(channel):
                try:
                    self.local_layer.send(channel, message)
                except full_errors:
                    full += 1  # send_group skips full members silently
        remote = [channel for channel in members if spec.is_directed(channel)]
        if remote:
            full += super()._send_to_members(remote, message, plain_body)
        return full

    def flush(self) -> None:
        """Empty the Redis side and the local transport."""
        self._require_local("flush")
        super().flush()
        if self.local_layer is not None:
            self.local_layer.flush()

    def flush_counts(self) -> Dict[str, int]:
        """Like :meth:`flush`; a local layer's counts appear under ``local ...`` keys when it gives them."""
        self._require_local("flush")
        counts = super().flush_counts()
        if self.local_layer is not None:
            local_counts = getattr(self.local_layer, "flush_counts", None)
            if callable(local_counts):
                counts.update({f"local {where}": count for where, count in local_counts().items()})
            else:
                self.local_layer.flush()
        return counts

    def global_statistics(self) -> Dict[str, int]:
        """Counters summed over the Redis side and the local transport."""
        self._require_local("statistics")
        totals = super().global_statistics()
        if self.local_layer is not None:
            for name, value in self.local_layer.global_statistics().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def channel_statistics(self, channel: str) -> Dict[str, int]:
        """Statistics of one channel, from the side that carries it."""
        spec.validate_channel_name(channel)
        if self.local_layer is None or spec.is_directed(channel):
            return super().channel_statistics(channel)
        self._require_local("statistics")
        return self.local_layer.channel_statistics(channel)

    def receive_twisted(self, channels: Iterable[str]) -> Any:
        """The Twisted extension; with a ``local_layer`` it is not offered."""
        self._require_local("twisted")
        # Unlike the plain layer (which first looks in the reactor thread), a
        # receive spanning the local and the remote Redis goes to the pool at
        # once: one sweep, not two, when nothing is waiting.
        targets = self._spread_targets(channels)
        if targets is None:
            return super().receive_twisted(channels)
        return self._defer_to_pool(self._receive_everywhere, [], targets, True, self.extension_receive_timeout)

    async def receive_async(self, channels: Iterable[str]) -> Received:
        """The asyncio extension; with a ``local_layer`` it is not offered."""
        self._require_local("asyncio")
        # a receive spanning both Redis servers runs in the executor (the engine decides)
        return await super().receive_async(channels)

    def _spread_targets(self, channels: Iterable[str]) -> Optional[List[Target]]:
        """The targets of an extension receive when they span several servers, else None.

        The extensions' own wait takes each server in turn, bounded by Redis's
        ``hz`` tick; the wait on every server at once runs in their thread instead.
        """
        try:
            names = spec.validate_channel_list(channels)
        except (TypeError, ValueError):
            return None  # the extension reports it in its own way
        targets = self._receive_targets(names)
        return targets if len(targets) > 1 else None

    def close(self) -> None:
        """Drop pooled connections, and close a local layer this one built."""
        super().close()
        if self._owns_local_layer and callable(getattr(self.local_layer, "close", None)):
            self.local_layer.close()

    def _require_local(self, extension: str) -> None:
        if self.local_layer is not None and extension not in self.extensions:
            raise NotImplementedError(
                f"the {extension!r} extension is not available with local_layer={self.local_layer!r} "
                f"(available: {self.extensions})"
            )

    @contextmanager
    def _local_errors(self) -> Iterator[None]:
        """The local layer's ChannelFull/MessageTooLarge as this layer's, so callers catch one class."""
        full = getattr(self.local_layer, "ChannelFull", self.ChannelFull)
        too_large = getattr(self.local_layer, "MessageTooLarge", self.MessageTooLarge)
        try:
            yield
        except (self.ChannelFull, self.MessageTooLarge):
            raise
        except full as error:
            raise self.ChannelFull(str(error)) from error
        except too_large as error:
            raise self.MessageTooLarge(str(error)) from error

    def __repr__(self) -> str:
        if self.local_layer is not None:
            local = repr(self.local_layer)
        else:
            local = [self.normal_shards.describe(i) for i in range(len(self.normal_shards))]
        return f"{super().__repr__()[:-1]} local={local}>"


def _check_local_settings(local_hosts: Any, local_layer: Any, config: Any, connection_kwargs: Any) -> None:
    if local_hosts is None and local_layer is None:
        raise ValueError(
            "RedisLocalChannelLayer needs a machine-local transport for normal channels: set "
            "local_hosts to a Redis on this machine (e.g. local_hosts=['unix:///run/redis/redis.sock'] "
            "or ['redis://127.0.0.1:6379']), or local_layer to another channel layer object or "
            "its dotted import path"
        )
    if local_hosts is not None and local_layer is not None:
        raise ValueError(
            f"set only one of local_hosts ({local_hosts!r}) and local_layer ({local_layer!r})"
        )
    if config is not None and not isinstance(local_layer, str):
        raise ValueError(
            "local_layer_config is only used when local_layer is a dotted import path, "
            f"not with local_layer={local_layer!r}"
        )
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"local_layer_config must be a dict, not {config!r}")
    if connection_kwargs is not None and local_hosts is None:
        raise ValueError("local_connection_kwargs is only used with local_hosts")


def _build_local_layer(local_layer: Any, settings: Dict[str, Any]) -> Any:
    """The local layer object: ``local_layer`` itself, or its class built with ``settings``."""
    if isinstance(local_layer, str):
        factory = _import(local_layer)
        if not callable(factory):
            raise ValueError(f"local_layer {local_layer!r} names {factory!r}, not a layer class")
        try:
            inspect.signature(factory).bind(**settings)
        except TypeError as error:
            raise ValueError(
                f"local_layer {local_layer!r} cannot be built with {sorted(settings)}: {error} "
                "(encryption keys must reach both sides; extra settings go in local_layer_config)"
            ) from None
        except ValueError:
            pass  # no introspectable signature; let the call itself decide
        local_layer = factory(**settings)
    for method in ("send", "receive"):
        if not callable(getattr(local_layer, method, None)):
            raise TypeError(f"local_layer {local_layer!r} is not a channel layer: it has no {method}()")
    return local_layer


def _import(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"local_layer {path!r} is not a dotted import path like 'package.module.Layer'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"local_layer {path!r} cannot be imported: {error}") from None


class _OwnSettingsShards(HostShards):
    """Local hosts with their own ``local_connection_kwargs``.

    Overriding ``client`` tells the asyncio extension not to copy the layer's
    ``connection_kwargs`` onto these hosts; it then uses these sync clients.
    """

    def client(self, index: int) -> redis.Redis:
        return super().client(index)
