"""Startup nodes and one pooled client per cluster node.

The layer is given a few *startup nodes* (``redis://`` / ``rediss://`` URLs
or ``(host, port)`` pairs); the other nodes are discovered from the slot map
and reached with the same scheme, credentials and URL options as the first
startup node, so a TLS cluster with an ACL user needs them written once.
Every client is built by :func:`asgi_redis.connections.make_client`, so
every node follows the layer's at-most-once retry policy.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

import redis

from ..clients import describe, make_client
from ..connections import parse_hosts
from .slotmap import Address

DEFAULT_STARTUP_NODES = [("localhost", 6379)]


class StartupNode:
    """One configured startup node: where it is and how to reach its peers."""

    __slots__ = ("spec", "address", "scheme", "netloc_credentials", "query")

    def __init__(self, spec: Any):
        self.spec = spec
        if isinstance(spec, str):
            parsed = urlparse(spec)
            if parsed.scheme not in ("redis", "rediss"):
                raise ValueError(
                    f"cluster startup node {describe(spec)!r} must be a redis:// or rediss:// URL "
                    "(a cluster is not reachable through a unix socket)"
                )
            if not parsed.hostname:
                raise ValueError(f"cluster startup node {describe(spec)!r} names no host")
            _check_db(spec, parsed.path.strip("/") or "0", parse_qs(parsed.query).get("db", ["0"])[0])
            try:
                port = parsed.port or 6379
            except ValueError:
                raise ValueError(f"cluster startup node {describe(spec)!r} has a bad port") from None
            self.address: Address = (parsed.hostname, port)
            self.scheme = parsed.scheme
            self.netloc_credentials = parsed.netloc.rpartition("@")[0]
            self.query = parsed.query
        else:
            self.address = (spec[0], spec[1])
            self.scheme = "redis"
            self.netloc_credentials = ""
            self.query = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def spec_for(self, address: Address) -> Any:
        """How to reach the node at ``address`` the way this startup node is reached."""
        if address == self.address:
            return self.spec
        if isinstance(self.spec, tuple):
            return address
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        netloc = f"{self.netloc_credentials}@{host}:{address[1]}" if self.netloc_credentials else f"{host}:{address[1]}"
        return urlunparse((self.scheme, netloc, "/0", "", self.query, ""))


def _check_db(spec: Any, *values: Any) -> None:
    for value in values:
        if str(value) not in ("0", ""):
            raise ValueError(
                f"cluster startup node {describe(spec)!r} names database {value}: "
                "Redis Cluster has only database 0"
            )


def parse_startup_nodes(hosts: Any) -> List[StartupNode]:
    """Check ``hosts`` (ValueError naming the bad entry) and return the startup nodes."""
    return [StartupNode(spec) for spec in parse_hosts(hosts, DEFAULT_STARTUP_NODES, what="hosts")]


def check_cluster_kwargs(connection_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    if str(connection_kwargs.get("db", 0)) != "0":
        raise ValueError(
            f"connection_kwargs['db'] is {connection_kwargs['db']!r}: Redis Cluster has only database 0"
        )
    return connection_kwargs


class NodeClients:
    """One pooled redis-py client per node address, made on first use and kept."""

    def __init__(self, startup: Sequence[StartupNode], connection_kwargs: Dict[str, Any]):
        self.startup = list(startup)
        self.connection_kwargs = dict(connection_kwargs)
        self._clients: Dict[Address, redis.Redis] = {}
        self._lock = threading.Lock()

    def get(self, address: Address) -> redis.Redis:
        client = self._clients.get(address)
        if client is None:
            with self._lock:
                client = self._clients.get(address)
                if client is None:
                    client = make_client(self._spec(address), self.connection_kwargs)
                    self._clients[address] = client
        return client

    def _spec(self, address: Address) -> Any:
        for node in self.startup:
            if node.address == address:
                return node.spec
        return self.startup[0].spec_for(address)

    def known(self) -> List[Address]:
        return list(self._clients)

    def forget(self, address: Address) -> Optional[redis.Redis]:
        """Drop a node's client (it left the cluster); returns it, closed."""
        with self._lock:
            client = self._clients.pop(address, None)
        if client is not None:
            client.close()
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def cluster_enabled(spec: Any, connection_kwargs: Optional[Dict[str, Any]] = None) -> Optional[bool]:
    """Whether the server at ``spec`` (a URL or pair) runs in cluster mode; None if it cannot be asked."""
    kwargs = {"socket_connect_timeout": 3, "socket_timeout": 5, **(connection_kwargs or {})}
    try:
        client = make_client(spec, kwargs)
    except ValueError:
        return None
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except (redis.RedisError, OSError, ValueError):
        return None
    finally:
        client.close()


def describe_node(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


__all__ = ["NodeClients", "StartupNode", "check_cluster_kwargs", "cluster_enabled", "describe_node",
           "parse_startup_nodes"]
