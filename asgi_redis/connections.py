"""Which Redis client serves which shard.

A *shard set* answers two questions for the layer: "which client for shard
``i``?" and "which clients for a sweep?". The plain layer uses
:class:`HostShards`, one pooled client per configured host; the Sentinel
layer swaps in a set whose clients follow the current master, the local
layer one that points normal channels at a machine-local Redis. The layer's
send/receive code never knows which it has.
"""

from __future__ import annotations

import binascii
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlparse

import redis

from .clients import HostSpec, describe, make_client

__all__ = [
    "HostSpec", "describe", "make_client", "shard_index", "check_connection_kwargs",
    "parse_hosts", "parse_host", "ShardSet", "HostShards",
]

URL_SCHEMES = ("redis", "rediss", "unix")

# redis-py retries every command on connection errors by default. A retried
# EVALSHA of our send script, after the first one ran but its reply was lost,
# would queue the message twice: the layer is at-most-once, so every client
# comes from clients.py, whose retry policy repeats only what cannot duplicate.

_FORBIDDEN_KWARGS = {
    "decode_responses": "message bodies are binary; the layer decodes names itself",
    "connection_pool": "the layer builds one pool per shard; give its settings instead",
    "host": "give hosts in 'hosts', not in connection_kwargs",
    "port": "give hosts in 'hosts', not in connection_kwargs",
}


def shard_index(name: str, shard_count: int) -> int:
    """The shard of a name, exactly as asgi_redis 1.4.3 computed it."""
    bucket = binascii.crc32(name.encode("utf8")) & 0xFFF
    return int(bucket / (4096 / shard_count))


def check_connection_kwargs(connection_kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if connection_kwargs is None:
        return {}
    if not isinstance(connection_kwargs, dict):
        raise ValueError(f"connection_kwargs must be a dict, not {connection_kwargs!r:.80}")
    for key in connection_kwargs:
        if key in _FORBIDDEN_KWARGS:
            raise ValueError(f"connection_kwargs[{key!r}] is not allowed: {_FORBIDDEN_KWARGS[key]}")
    return dict(connection_kwargs)


def parse_hosts(hosts: Any, default: Sequence[HostSpec], what: str = "hosts") -> List[HostSpec]:
    """Normalise ``hosts`` to a list of URLs and ``(host, port)`` tuples."""
    if hosts is None:
        return list(default)
    if isinstance(hosts, (str, bytes)):
        raise ValueError(
            f"{what} must be a list, not a single string: write {what}=[{hosts!r}] "
            "(a bare string would be read one character per host)"
        )
    if isinstance(hosts, dict) or not hasattr(hosts, "__iter__"):
        raise ValueError(f"{what} must be a list of redis URLs or (host, port) pairs, not {hosts!r}")
    result = [parse_host(host, what) for host in hosts]
    if not result:
        raise ValueError(f"{what} is empty; give at least one redis URL or (host, port) pair")
    return result


def parse_host(host: Any, what: str = "hosts") -> HostSpec:
    if isinstance(host, str):
        scheme = urlparse(host).scheme
        if scheme not in URL_SCHEMES:
            raise ValueError(
                f"{what} entry {host!r} is not a redis URL: it must start with "
                "redis://, rediss:// or unix://"
            )
        return host
    if isinstance(host, (tuple, list)) and len(host) == 2:
        address, port = host
        if isinstance(address, str) and address and isinstance(port, int) and not isinstance(port, bool):
            if 0 < port < 65536:
                return (address, port)
    raise ValueError(f"{what} entry {host!r} is neither a redis URL nor a (host, port) pair")


class ShardSet:
    """Base strategy: an ordered list of shards, each reachable through a client."""

    def __len__(self) -> int:
        raise NotImplementedError

    def client(self, index: int) -> redis.Redis:
        """The client that talks to shard ``index`` right now."""
        raise NotImplementedError

    def clients(self) -> List[redis.Redis]:
        """Every shard's client, in shard order, for sweeps (flush, statistics)."""
        return [self.client(index) for index in range(len(self))]

    def describe(self, index: int) -> str:
        """Shard ``index`` in words, for error messages."""
        return f"shard {index}"

    def connection_failed(self, index: int) -> None:
        """Told when an operation on shard ``index`` hit a connection error."""

    def close(self) -> None:
        """Drop every pooled connection (after a fork the pools reset themselves)."""


class HostShards(ShardSet):
    """One pooled redis-py client per configured host, in the order given."""

    def __init__(self, hosts: Sequence[HostSpec], connection_kwargs: Dict[str, Any]):
        self.hosts = list(hosts)
        self._clients = [make_client(host, connection_kwargs) for host in self.hosts]

    def __len__(self) -> int:
        return len(self._clients)

    def client(self, index: int) -> redis.Redis:
        return self._clients[index]

    def clients(self) -> List[redis.Redis]:
        return list(self._clients)

    def describe(self, index: int) -> str:
        return describe(self.hosts[index])

    def close(self) -> None:
        for client in self._clients:
            client.close()
