"""channels_redis ``hosts`` entries turned into synchronous redis-py clients.

channels_redis accepts, per shard: a URL string, a ``(host, port)`` pair, a
dict with ``"address"`` (a URL) plus connection keywords, a Sentinel dict
(``"sentinels"``, ``"master_name"``, optional ``"sentinel_kwargs"`` plus
connection keywords for the master), or a dict of plain ``redis.Redis``
connection keywords. We read the same entries and build one pooled,
thread-safe client per shard; redis-py pools notice a fork and reconnect.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, TypeVar

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from .. import errors
from ..clients import client_on_pool, describe, sync_kwargs

DEFAULT_HOSTS = [{"address": "redis://localhost:6379"}]

_Self = TypeVar("_Self", bound="HostClients")


def decode_hosts(hosts: Any) -> List[Dict[str, Any]]:
    """Every entry as a dict, the way channels_redis normalises them."""
    if not hosts:
        return [dict(entry) for entry in DEFAULT_HOSTS]
    if isinstance(hosts, (str, bytes)):
        raise ValueError(
            f"hosts must be a list, not a single string: write hosts=[{hosts!r}]"
        )
    if isinstance(hosts, dict) or not hasattr(hosts, "__iter__"):
        raise ValueError(f"hosts must be a list of URLs, (host, port) pairs or dicts, not {hosts!r:.80}")
    decoded = []
    for entry in hosts:
        if isinstance(entry, dict):
            decoded.append(dict(entry))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            decoded.append({"host": entry[0], "port": entry[1]})
        elif isinstance(entry, str):
            decoded.append({"address": entry})
        else:
            raise ValueError(f"hosts entry {entry!r:.80} is not a URL, a (host, port) pair or a dict")
    return decoded


def describe_host(entry: Dict[str, Any]) -> str:
    """An entry for messages, without passwords."""
    if "address" in entry:
        return describe(entry["address"])
    if "master_name" in entry:
        return f"sentinel master {entry['master_name']!r}"
    return f"{entry.get('host', 'localhost')}:{entry.get('port', 6379)}"


def make_client(entry: Dict[str, Any]) -> redis.Redis:
    """One pooled client for one ``hosts`` entry.

    redis-py retries a command after a connection error by default. If the
    first attempt ran but its reply was lost, a retried send would queue the
    message twice, so unless the entry asks for retries itself the client gets
    the layer's at-most-once policy (asgi_redis.clients), as the classic layers do.
    """
    kwargs = sync_kwargs(entry)
    for forbidden in ("decode_responses", "connection_pool"):
        if forbidden in kwargs:
            raise ValueError(f"hosts entry key {forbidden!r} is not supported: the client owns its pools")
    try:
        if "address" in kwargs:
            address = kwargs.pop("address")
            pool = redis.ConnectionPool.from_url(address, **kwargs)
        elif "master_name" in kwargs:
            master_name = kwargs.pop("master_name")
            sentinels = kwargs.pop("sentinels", None)
            if not sentinels:
                raise ValueError(f"Sentinel hosts entry for {master_name!r} has no 'sentinels' list")
            sentinel_kwargs = kwargs.pop("sentinel_kwargs", None)
            sentinel = Sentinel([tuple(s) for s in sentinels], sentinel_kwargs=sentinel_kwargs)
            pool = SentinelConnectionPool(master_name, sentinel, **kwargs)
        else:
            pool = redis.ConnectionPool(**kwargs)
    except TypeError as error:
        raise ValueError(f"hosts entry {describe_host(entry)}: redis-py rejects it: {error}") from None
    return client_on_pool(pool)


class HostClients:
    """What both synchronous producers share: one pooled client per ``hosts``
    entry, closing them, ``with`` support, a repr, and the guard that turns a
    connection failure into a :class:`~asgi_redis.errors.LayerConnectionError`
    naming the server.

    A subclass sets ``prefix``, ``hosts`` and ``_clients`` in its ``__init__``
    (each keeps its own order of checks) and ``_lost_reply`` to what a
    timed-out call of its own may have done.
    """

    prefix: str
    hosts: List[Dict[str, Any]]
    _clients: List[redis.Redis]
    _lost_reply = "a timed-out call may or may not have been carried out"

    def close(self) -> None:
        """Drop every pooled connection; the client reconnects if used again."""
        for client in self._clients:
            client.connection_pool.disconnect()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        hosts = ", ".join(describe_host(entry) for entry in self.hosts)
        return f"<{type(self).__name__} prefix={self.prefix!r} hosts=[{hosts}]>"

    @contextlib.contextmanager
    def _host(self, index: int) -> Iterator[redis.Redis]:
        """The client of host ``index``; its connection errors name the host."""
        try:
            yield self._clients[index]
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise errors.LayerConnectionError(
                f"Redis {describe_host(self.hosts[index])} failed: {error} ({self._lost_reply}; "
                "it is never retried, so never doubled)"
            ) from error
