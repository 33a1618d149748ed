"""The right synchronous producer for a ``CHANNEL_LAYERS`` entry.

The entry's ``BACKEND`` decides: channels_redis's core layer (or a subclass)
gets :class:`SyncChannelsRedisClient`, its pub/sub layer (or a subclass)
:class:`SyncPubSubClient`. Both offer ``send`` and ``group_send``, so a
project switches layers in its settings without touching producer code.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Optional, Type, Union

from .client import SyncChannelsRedisClient
from .pubsub import SyncPubSubClient

CORE_BACKEND = "channels_redis.core.RedisChannelLayer"
PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"

Producer = Union[SyncChannelsRedisClient, SyncPubSubClient]

_PUBSUB_OPTIONS = frozenset({"hosts", "prefix", "symmetric_encryption_keys", "serializer_format"})
# RedisPubSubChannelLayer accepts and ignores any keyword; these are the ones
# a CONFIG written for the core layer carries, so switching BACKEND keeps working.
# on_disconnect / on_reconnect are callbacks of its consumer side.
_IGNORED_BY_PUBSUB = frozenset({
    "expiry", "group_expiry", "capacity", "channel_capacity", "random_prefix_length",
    "on_disconnect", "on_reconnect",
})


def producer_from_settings(alias: str = "default",
                           channel_layers: Optional[Mapping[str, Any]] = None,
                           core_class: Type[SyncChannelsRedisClient] = SyncChannelsRedisClient) -> Producer:
    """A producer for ``CHANNEL_LAYERS[alias]`` (Django's settings by default)."""
    if channel_layers is None:
        from django.conf import settings

        channel_layers = getattr(settings, "CHANNEL_LAYERS", {})
    if alias not in channel_layers:
        raise ValueError(f"CHANNEL_LAYERS has no entry {alias!r}; it has {sorted(channel_layers)!r}")
    entry = channel_layers[alias]
    backend = entry.get("BACKEND")
    config: Dict[str, Any] = dict(entry.get("CONFIG") or {})
    if _is_backend(backend, PUBSUB_BACKEND):
        for key in config:
            if key not in _PUBSUB_OPTIONS and key not in _IGNORED_BY_PUBSUB:
                raise ValueError(
                    f"CHANNEL_LAYERS[{alias!r}]['CONFIG'] has {key!r}, which is no option of "
                    f"{PUBSUB_BACKEND}; it takes {sorted(_PUBSUB_OPTIONS)!r}"
                )
        return SyncPubSubClient(**{key: value for key, value in config.items() if key in _PUBSUB_OPTIONS})
    if _is_backend(backend, CORE_BACKEND):
        return core_class(**config)
    raise ValueError(
        f"CHANNEL_LAYERS[{alias!r}] uses BACKEND {backend!r}; the sync producers speak "
        f"{CORE_BACKEND} and {PUBSUB_BACKEND} (or subclasses of either)"
    )


def _is_backend(backend: Any, expected: str) -> bool:
    if backend == expected:
        return True
    if not isinstance(backend, str) or "." not in backend or backend in (CORE_BACKEND, PUBSUB_BACKEND):
        return False
    try:  # a project's own subclass keeps the format of its base
        module_name, _, class_name = expected.rpartition(".")
        base = getattr(importlib.import_module(module_name), class_name)
        module_name, _, class_name = backend.rpartition(".")
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False
    return isinstance(backend_class, type) and issubclass(backend_class, base)
