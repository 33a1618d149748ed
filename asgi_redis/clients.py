"""The one factory of every Redis client the package builds, sync and async.

Every client follows the layer's at-most-once retry policy (``retry.py``):
a failed connect is tried once more, a command already written is repeated
only when that cannot duplicate a message. The plain, Sentinel and local
layers, the channels_redis-compatible ``modern`` layer and the asyncio
extension all get their clients here, so the policy is decided in one place.

redis.asyncio cannot take :class:`~asgi_redis.retry.SafeRetry`: its clients
await an async ``call_with_retry``, and the error marks SafeRetry decides
from are put on by a mixin over the *sync* connection classes. The async
clients only ever run receive steps (pop, BLPOP, the layout's follow-up
call), none of which may be repeated once written, so no retry at all
(``Retry(NoBackoff(), 0)``) is the same policy for them; what they give up is
only the second connect attempt.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import exhaustion, retry

HostSpec = Union[str, Tuple[str, int]]


def describe(host: HostSpec) -> str:
    """A host for messages, without any password a URL may carry."""
    if isinstance(host, str):
        parsed = urlparse(host)
        if parsed.scheme == "unix":
            return f"unix://{parsed.path}"
        return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 6379}{parsed.path or ''}"
    return f"{host[0]}:{host[1]}"


def sync_kwargs(*settings: Dict[str, Any]) -> Dict[str, Any]:
    """Client keywords: the retry policy, then ``settings`` in order (a user's own ``retry`` wins)."""
    merged = retry.client_defaults()
    for part in settings:
        merged.update(part)
    # no file opened per connection object (EMFILE would wedge the pool): exhaustion.py
    return {**exhaustion.client_defaults(merged), **merged}


def make_client(host: HostSpec, connection_kwargs: Dict[str, Any]) -> redis.Redis:
    """A pooled client for one URL or ``(host, port)``."""
    kwargs = sync_kwargs(connection_kwargs)
    try:
        if isinstance(host, str):
            return retry.install(redis.Redis.from_url(host, **kwargs))
        return retry.install(redis.Redis(host=host[0], port=host[1], **kwargs))
    except TypeError as error:
        raise ValueError(f"connection_kwargs not accepted by redis-py for {describe(host)}: {error}") from None


def client_on_pool(pool: redis.ConnectionPool) -> redis.Redis:
    """A client over a pool built elsewhere (Sentinel, channels_redis hosts) with
    ``sync_kwargs``; its connections get the policy's error marks."""
    return retry.install(redis.Redis(connection_pool=pool))


def no_retry() -> Retry:
    """For clients that must never repeat a call (sentinel queries go to the next sentinel instead)."""
    return Retry(NoBackoff(), 0)


def make_async_client(host: HostSpec, connection_kwargs: Dict[str, Any]) -> Any:
    """The redis.asyncio twin of :func:`make_client` (see the module docstring on
    its retry policy), or None for a connection keyword only the sync client knows."""
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry

    kwargs = {**exhaustion.client_defaults(connection_kwargs), **connection_kwargs,
              "retry": AsyncRetry(NoBackoff(), 0)}
    try:
        if isinstance(host, str):
            return redis.asyncio.Redis.from_url(host, **kwargs)
        return redis.asyncio.Redis(host=host[0], port=host[1], **kwargs)
    except TypeError:
        return None
