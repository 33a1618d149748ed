"""The right synchronous producer for a ``CHANNEL_LAYERS`` entry.

The entry's ``BACKEND`` decides: channels_redis's core layer (or a subclass)
gets :class:`SyncChannelsRedisClient`, its pub/sub layer (or a subclass)
:class:`SyncPubSubClient`. Both offer ``send`` and ``group_send``, so a
project switches layers in its settings without touching producer code.

This module imports neither producer class (each one's ``from_settings``
calls in here, so importing them back would close an import cycle): the
package registers both with :func:`register_producers` when it is imported.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Optional, Protocol

CORE_BACKEND = "channels_redis.core.RedisChannelLayer"
PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"


class Producer(Protocol):
    """What both producers offer (SyncChannelsRedisClient, SyncPubSubClient)."""

    def send(self, channel: str, message: Dict[str, Any]) -> Any: ...

    def group_send(self, group: str, message: Dict[str, Any]) -> Any: ...


_PRODUCERS: Dict[str, Any] = {}  # "core" and "pubsub" -> the producer class


def register_producers(core_class: Any, pubsub_class: Any) -> None:
    """The classes :func:`producer_from_settings` builds (asgi_redis.modern's __init__ calls it)."""
    _PRODUCERS.update(core=core_class, pubsub=pubsub_class)

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
                           core_class: Optional[Any] = None) -> Producer:
    """A producer for ``CHANNEL_LAYERS[alias]`` (Django's settings by default);
    ``core_class`` replaces the registered core producer (a subclass's from_settings)."""
    if core_class is None:
        core_class = _PRODUCERS["core"]
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
        return _PRODUCERS["pubsub"](**{key: value for key, value in config.items() if key in _PUBSUB_OPTIONS})
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
