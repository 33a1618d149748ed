"""RedisSentinelChannelLayer: the shards are Sentinel services, not hosts.

Only the connection strategy changes. Each service gets ONE redis-py client,
built once, whose connection pool asks the sentinels for the current master
whenever it opens a connection (redis-py's ``SentinelConnectionPool`` with
this module as its "sentinel manager"). Send/receive code in core.py never
knows; a warm connection costs no extra round trip.

A failover reaches us as a connection error (the master died) or a READONLY
reply (the master was demoted). Either one drops the service's cached master
and its idle connections, so the next operation asks the sentinels again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlparse

import redis
from redis.connection import SSLConnection
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool, SentinelManagedConnection

from . import clients, exhaustion, retry
from .connections import ShardSet
from .core import RedisChannelLayer
from .errors import LayerConnectionError

logger = logging.getLogger("asgi_redis")

Address = Tuple[str, int]
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")

# Sentinel mode exists to outlive a dead master, and a connect to a host that
# vanished can otherwise hang for minutes: bound both unless configured.
_MASTER_DEFAULTS: Dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
# A lookup asks the sentinels one after another: a silent one must not stall
# it, and the next sentinel is a better retry than the same one again.
_SENTINEL_DEFAULTS: Dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 1}
_FORBIDDEN_SENTINEL_KWARGS = ("host", "port", "connection_pool", "decode_responses")
# host or [IPv6 host], then an optional :port
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/@,\[\]]+)(?::([0-9]{1,5}))?$")


# -- configuration ---------------------------------------------------------


def parse_sentinel_hosts(hosts: Any) -> List[Tuple[Address, Dict[str, Any]]]:
    """``hosts`` as ``((host, port), credentials)`` pairs, one per sentinel."""
    if hosts is None:
        return [(("localhost", DEFAULT_SENTINEL_PORT), {})]
    if isinstance(hosts, (str, bytes)):
        raise ValueError(
            f"hosts must be a list of sentinel addresses, not a single string: write hosts=[{hosts!r}]"
        )
    if isinstance(hosts, dict) or not hasattr(hosts, "__iter__"):
        raise ValueError(f"hosts must be a list of (host, port) sentinel addresses, not {hosts!r}")
    nodes: List[Tuple[Address, Dict[str, Any]]] = []
    for host in hosts:
        nodes.extend(_parse_sentinel_host(host))
    if not nodes:
        raise ValueError("hosts is empty; give at least one sentinel as (host, port)")
    return nodes


def _parse_sentinel_host(host: Any) -> List[Tuple[Address, Dict[str, Any]]]:
    if isinstance(host, (tuple, list)) and len(host) == 2:
        address, port = host
        if isinstance(address, str) and address and _is_port(port):
            return [((address, port), {})]
        raise ValueError(f"hosts entry {host!r} is not a (host, port) pair with a port in 1-65535")
    if not isinstance(host, str):
        raise ValueError(f"hosts entry {host!r} is neither a (host, port) pair nor a 'host:port' string")
    if "://" not in host:
        return [(_parse_address(host, host), {})]
    parsed = urlparse(host)
    if parsed.scheme not in SENTINEL_SCHEMES:
        raise ValueError(
            f"hosts entry {host!r}: sentinel URLs start with redis+sentinel:// "
            "(redis:// names a server, not a sentinel)"
        )
    if parsed.path.strip("/") or parsed.query:
        raise ValueError(
            f"hosts entry {host!r}: name the services with the 'services' option, not in the URL"
        )
    credentials, _, netloc = parsed.netloc.rpartition("@")
    extra: Dict[str, Any] = {}
    if credentials:
        username, _, password = credentials.partition(":")
        if username:
            extra["username"] = unquote(username)
        if password:
            extra["password"] = unquote(password)
    # one URL may list several sentinels: redis+sentinel://a:26379,b:26379
    return [(_parse_address(part, host), dict(extra)) for part in netloc.split(",")]


def _parse_address(text: str, entry: str) -> Address:
    match = _ADDRESS.match(text)
    port = int(match.group(2)) if match and match.group(2) else DEFAULT_SENTINEL_PORT
    if match is None or not _is_port(port):
        raise ValueError(f"hosts entry {entry!r} is not a sentinel address like 'host:26379'")
    return (match.group(1).strip("[]"), port)


def _is_port(port: Any) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536


def check_services(services: Any) -> List[str]:
    if services is None:
        return []
    if isinstance(services, (str, bytes)):
        raise ValueError(
            f"services must be a list of service names, not a single string: write [{services!r}]"
        )
    if isinstance(services, dict) or not hasattr(services, "__iter__"):
        raise ValueError(f"services must be a list of service names, not {services!r}")
    names = list(services)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"services entry {name!r} is not a non-empty str")
    if len(set(names)) != len(names):
        raise ValueError(f"services {names!r} names a service twice; each one is a shard")
    return names


def check_refresh_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"sentinel_refresh_interval must be a number of seconds >= 0, not {value!r}")
    return float(value)


def sentinel_connection_kwargs(sentinel_kwargs: Any, connection_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    if sentinel_kwargs is None:
        # as redis-py's Sentinel does: the timeouts of the masters fit the sentinels too
        sentinel_kwargs = {k: v for k, v in connection_kwargs.items() if k.startswith("socket_")}
    elif not isinstance(sentinel_kwargs, dict):
        raise ValueError(f"sentinel_kwargs must be a dict, not {sentinel_kwargs!r:.80}")
    for key in _FORBIDDEN_SENTINEL_KWARGS:
        if key in sentinel_kwargs:
            raise ValueError(f"sentinel_kwargs[{key!r}] is not allowed: sentinel addresses go in 'hosts'")
    return {"retry": clients.no_retry(), **_SENTINEL_DEFAULTS, **sentinel_kwargs}


# -- asking the sentinels --------------------------------------------------------


class Sentinels:
    """The configured sentinels, asked in turn, the last one that answered first."""

    def __init__(self, nodes: Sequence[Tuple[Address, Dict[str, Any]]], kwargs: Dict[str, Any]):
        self.addresses = [f"{host}:{port}" for (host, port), _ in nodes]
        try:
            self._clients = [
                redis.Redis(host=address[0], port=address[1], **{**kwargs, **extra})
                for address, extra in nodes
            ]
        except TypeError as error:
            raise ValueError(f"sentinel_kwargs not accepted by redis-py: {error}") from None
        self._first = 0

    def _ask(self, question: Any) -> Tuple[Any, List[str]]:
        """``question(client)`` on each sentinel until one gives a non-None answer."""
        failures = []
        count = len(self._clients)
        start = self._first
        for offset in range(count):
            number = (start + offset) % count
            try:
                answer = question(self._clients[number])
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
                if exhaustion.descriptor_errno(error):
                    raise  # this process is out of descriptors: every other sentinel would be too
                failures.append(f"{self.addresses[number]}: {error}")
                continue
            if answer is None:
                failures.append(f"{self.addresses[number]}: master down or being replaced")
                continue
            self._first = number
            return answer, failures
        return None, failures

    def master_address(self, service: str) -> Address:
        """Where the master of ``service`` is now; MasterNotFoundError (a redis
        ConnectionError) when no sentinel knows a master that is up."""

        def question(client: redis.Redis) -> Optional[Address]:
            # execute_command, not redis-py's sentinel_master(): some redis-py 7
            # releases pass an option meant for their Sentinel class to the parser
            state = client.execute_command("SENTINEL MASTER", service)
            if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
                return None  # down or mid-failover: a connect there would only fail
            return (state["ip"], int(state["port"]))

        address, failures = self._ask(question)
        if address is None:
            raise MasterNotFoundError(f"no master for service {service!r}: " + "; ".join(failures))
        return address

    def service_names(self) -> List[str]:
        """Every service the sentinels monitor, sorted: every process must see the
        same order, since the order decides each name's shard."""
        names, failures = self._ask(lambda client: sorted(client.execute_command("SENTINEL MASTERS")))
        if names is None:
            raise LayerConnectionError(
                "could not list the services the sentinels monitor; " + "; ".join(failures)
            )
        if not names:
            raise LayerConnectionError(
                f"the sentinels at {', '.join(self.addresses)} monitor no service; "
                "give 'services' or add a 'sentinel monitor' line"
            )
        return names

    def close(self) -> None:
        for client in self._clients:
            client.close()


# -- the shard strategy ------------------------------------------------------


class _MasterConnection(SentinelManagedConnection):
    """A master connection that forgets its service's master as soon as it
    cannot reach it or finds it demoted, so that even a retry made inside
    redis-py asks the sentinels again.

    Besides redis-py's own READONLY check it reads a demotion out of the
    replies redis-py lets through: a script's write refused with READONLY
    (Redis < 7 wraps it in a script error) and UNBLOCKED (a BLPOP cut off by
    the demotion)."""

    _connecting = False

    def connect_to(self, address: Address) -> None:
        self._connecting = True
        try:
            super().connect_to(address)
        except (redis.ConnectionError, redis.TimeoutError):
            self._forget_master()
            raise
        finally:
            self._connecting = False

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if not self._connecting and not self._sock:
            # redis-py >= 6 reconnects through here, not connect(), when it
            # retries a command: ask where the master is now, as connect() does,
            # or the retry would go back to the old (dead or demoted) address
            self.connect_to(self.connection_pool.get_master_address())
            return
        super().connect_check_health(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ConnectionError:
            self._forget_master()  # includes redis-py's "previous master is now a slave"
            raise
        except redis.ResponseError as error:
            text = str(error)
            if text.startswith("UNBLOCKED") or "-READONLY " in text or text.startswith("READONLY"):
                self._forget_master()
                self.disconnect()
                demoted = redis.ConnectionError(f"the master was demoted to a replica: {text}")
                # Not retried within the call: the demoted server may already have
                # answered NOSCRIPT (its script cache is flushed by the resync),
                # and the script wrapper reloads only once, so a retry on the new
                # master could fail with a bare NOSCRIPT. The caller gets
                # LayerConnectionError; its next operation goes to the new master.
                setattr(demoted, retry._COMMAND, None)
                raise demoted from error
            raise

    def _forget_master(self) -> None:
        pool = self.connection_pool  # redis-py's pool proxy (or the pool, in redis-py 5.0)
        forget = getattr(pool.sentinel_manager, "forget_master", None)
        if forget is not None:
            forget(pool.service_name)


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    pass


class SentinelShards(ShardSet):
    """One client per service, following that service's current master.

    It is also the "sentinel manager" of each client's SentinelConnectionPool:
    the pool calls :meth:`discover_master` when it opens a connection.
    """

    def __init__(self, sentinels: Sentinels, services: Sequence[str], refresh_interval: float,
                 connection_kwargs: Dict[str, Any]):
        self.sentinels = sentinels
        self.services = list(services)
        self.refresh_interval = refresh_interval
        self._known: Dict[str, Tuple[Address, float]] = {}  # service -> (master, when looked up)
        self._lock = threading.Lock()
        self._clients = [self._master_client(service, connection_kwargs) for service in self.services]

    def _master_client(self, service: str, connection_kwargs: Dict[str, Any]) -> redis.Redis:
        kwargs = clients.sync_kwargs(_MASTER_DEFAULTS, connection_kwargs)
        kwargs["connection_class"] = _MasterSSLConnection if kwargs.pop("ssl", False) else _MasterConnection
        try:
            pool = SentinelConnectionPool(service, self, **kwargs)
            # the pool builds connections lazily: a misspelt option would only
            # show at the first connect, deep inside a send
            pool.connection_class(**pool.connection_kwargs)
            # the layer's retry policy: repeat only what cannot duplicate a message
            return clients.client_on_pool(pool)
        except TypeError as error:
            raise ValueError(f"connection_kwargs not accepted by redis-py: {error}") from None

    # SentinelConnectionPool's side: called when a connection opens
    def discover_master(self, service: str) -> Address:
        with self._lock:
            known = self._known.get(service)
        if known is not None and self.refresh_interval:
            if time.monotonic() - known[1] < self.refresh_interval:
                return known[0]
        return self._look_up(service)

    def _look_up(self, service: str) -> Address:
        address = self.sentinels.master_address(service)
        with self._lock:
            previous = self._known.get(service)
            self._known[service] = (address, time.monotonic())
        if previous is not None and previous[0] != address:
            logger.warning("Sentinel service %s moved from %s:%s to %s:%s", service, *previous[0], *address)
        return address

    def discover_slaves(self, service: str) -> List[Address]:
        return []  # only master clients are built here

    # the layer's side
    def __len__(self) -> int:
        return len(self._clients)

    def client(self, index: int) -> redis.Redis:
        if self.refresh_interval:
            self._refresh_if_due(index)
        return self._clients[index]

    def _refresh_if_due(self, index: int) -> None:
        """Every refresh_interval, check that the master did not move while our
        connections kept working (e.g. a partition). One sentinel round trip per
        interval, not per operation."""
        service = self.services[index]
        with self._lock:
            known = self._known.get(service)
            if known is None or time.monotonic() - known[1] < self.refresh_interval:
                return
            # claim this refresh so concurrent callers keep using the known master
            self._known[service] = (known[0], time.monotonic())
        try:
            self._look_up(service)
        except redis.ConnectionError as error:
            # sentinels unreachable: a master that still answers is still good
            logger.warning("Could not refresh the master of %s: %s", service, error)
            return
        # the pool compares the fresh answer with its master and drops idle
        # connections to an old one (in-use ones are dropped on release)
        self._clients[index].connection_pool.get_master_address()

    def clients(self) -> List[redis.Redis]:
        return [self.client(index) for index in range(len(self))]

    def describe(self, index: int) -> str:
        service = self.services[index]
        known = self._known.get(service)
        if known is None:
            return f"service {service!r}"
        host, port = known[0]
        return f"service {service!r} (master {host}:{port})"

    def forget_master(self, service: str) -> None:
        with self._lock:
            self._known.pop(service, None)

    def connection_failed(self, index: int) -> None:
        """Forget the master at once: the next connection asks the sentinels."""
        self.forget_master(self.services[index])
        # idle connections to a dead or demoted master would each fail once more
        self._clients[index].connection_pool.disconnect(inuse_connections=False)

    def close(self) -> None:
        for client in self._clients:
            client.connection_pool.disconnect()
        self.sentinels.close()


# -- the layer -----------------------------------------------------------------


class RedisSentinelChannelLayer(RedisChannelLayer):
    """The Redis channel layer over Sentinel-managed services.

    ``hosts`` are sentinel addresses; ``services`` the shards (empty: every
    master the sentinels monitor, sorted by name). Everything else behaves as
    in :class:`RedisChannelLayer`.
    """

    default_hosts: Sequence[Any] = [("localhost", DEFAULT_SENTINEL_PORT)]

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
        services: Optional[Sequence[str]] = None,
        sentinel_refresh_interval: float = 0,
        sentinel_kwargs: Optional[Dict[str, Any]] = None,
        layout: str = "classic",
        **options: Any,
    ) -> None:
        # read by _create_shards, which the core's __init__ calls
        self.services = check_services(services)
        self.sentinel_refresh_interval = check_refresh_interval(sentinel_refresh_interval)
        self._sentinel_kwargs = sentinel_kwargs
        super().__init__(
            expiry=expiry,
            hosts=hosts,
            prefix=prefix,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            symmetric_encryption_keys=symmetric_encryption_keys,
            stats_prefix=stats_prefix,
            connection_kwargs=connection_kwargs,
            layout=layout,
            **options,
        )

    def _create_shards(self, hosts: Optional[Sequence[Any]]) -> ShardSet:
        nodes = parse_sentinel_hosts(hosts if hosts is not None else self.default_hosts)
        kwargs = sentinel_connection_kwargs(self._sentinel_kwargs, self.connection_kwargs)
        sentinels = Sentinels(nodes, kwargs)
        if not self.services:
            try:
                self.services = sentinels.service_names()
            except Exception:
                sentinels.close()
                raise
        return SentinelShards(
            sentinels, self.services, self.sentinel_refresh_interval, self.connection_kwargs
        )
