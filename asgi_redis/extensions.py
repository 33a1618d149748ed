"""The ``twisted`` and ``asyncio`` extensions: receives that do not block a loop.

Both keep the semantics of a blocking :meth:`receive` (``!`` and ``?``
channels, sharding, encryption, expiry, bodies deleted on read) because both
run the receive engine's plan (``asgi_redis/receive/``); only who performs
its Redis calls differs.

``receive_twisted`` looks for a waiting message in the reactor thread (one
pop.lua round trip per shard, like daphne's own sends) and hands only the
wait to a small Twisted thread pool of its own. daphne keeps exactly one
receive in flight, so one pooled thread waits in BLPOP on one persistent
connection while the reactor stays free; a reply costs BLPOP and
take_body.lua (2 round trips) plus one thread hand-off (about 0.1 ms,
measured in README.rst). A native Twisted Redis protocol could save only
that hand-off and would duplicate the receive logic, the NOSCRIPT handling
and the connection settings; 1.4.3 built a new connection pool per message
instead, which capped daphne at ~90 echoes/s.

``receive_async`` answers the same plan's steps with ``redis.asyncio``
clients, one per shard and event loop (a redis.asyncio connection belongs to
the loop that opened it). Receives spanning several servers (normal
channels on several shards) and shard sets it cannot mirror (Sentinel,
custom) run the blocking plan, which waits on every server at once, in the
loop's default executor; the Twisted extension hands such waits to its pool
the same way.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from . import loop_scope, spec
from .clients import make_async_client
from .connections import HostShards

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred
    from twisted.python.threadpool import ThreadPool

    from .connections import ShardSet
    from .receive import Receive
    from .receive.port import Target

Received = Tuple[Optional[str], Optional[Dict[str, Any]]]

_twisted_importable: Optional[bool] = None


def twisted_available() -> bool:
    """Whether Twisted can be imported (checked once; importing it installs no reactor)."""
    global _twisted_importable
    if _twisted_importable is None:
        try:
            import twisted.internet.threads  # noqa: F401
            import twisted.python.threadpool  # noqa: F401
        except ImportError:
            _twisted_importable = False
        else:
            _twisted_importable = True
    return _twisted_importable


class ExtensionsMixin:
    """``receive_twisted`` and ``receive_async`` for :class:`RedisChannelLayer`."""

    # How long one extension receive waits before firing (None, None). daphne
    # calls again at once, so this only bounds how long a reactor shutdown
    # waits for the pool thread, and costs one idle sweep per period.
    extension_receive_timeout = 1.0
    twisted_pool_size = 10  # receives in flight at once; each holds one connection

    # the state the extensions keep, set by _init_extensions (the layer's __init__)
    _twisted_receive_pool: Optional[ThreadPool]
    _async_clients_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncClients]
    _extensions_lock: threading.Lock
    connection_kwargs: Dict[str, Any]

    def _init_extensions(self) -> None:
        self._twisted_receive_pool = None  # started at the first wait handed to a thread
        self._async_clients_by_loop = weakref.WeakKeyDictionary()  # a connection belongs to its loop
        self._extensions_lock = threading.Lock()

    def _extension_names(self) -> List[str]:
        return (["twisted"] if twisted_available() else []) + ["asyncio"]

    # the layer's side (core.py)
    def _receive_targets(self, names: List[str]) -> List[Target]:
        raise NotImplementedError

    def _receive(self, targets: List[Target], poll: Any = None, poll_interval: float = 0.02) -> Receive:
        raise NotImplementedError

    # -- Twisted ----------------------------------------------------------------

    def receive_twisted(self, channels: Iterable[str]) -> Deferred:
        """A Deferred firing ``(channel, message)``, or ``(None, None)`` after a bounded wait.

        Must be called from the reactor thread. Bad channel names fail the
        Deferred with ``TypeError``.
        """
        from twisted.internet import defer

        try:
            names = spec.validate_channel_list(channels)
        except (TypeError, ValueError):
            return defer.fail()
        if not names:
            return defer.succeed((None, None))
        receive = self._receive(self._receive_targets(names))
        return receive.run_twisted(self.extension_receive_timeout, self._defer_to_pool)

    def _defer_to_pool(self, function: Any, *args: Any) -> Deferred:
        """``function(*args)`` in this layer's receive thread pool, as a Deferred."""
        from twisted.internet import reactor, threads

        return threads.deferToThreadPool(reactor, self._twisted_pool(reactor), function, *args)

    def _twisted_pool(self, reactor: Any) -> Any:
        pool = self._twisted_receive_pool
        if pool is not None and not pool.joined:
            return pool
        with self._extensions_lock:
            pool = self._twisted_receive_pool
            if pool is None or pool.joined:
                from twisted.python.threadpool import ThreadPool

                pool = ThreadPool(minthreads=0, maxthreads=self.twisted_pool_size, name="asgi_redis-receive")
                pool.start()
                # a receive waits at most extension_receive_timeout, so this
                # join delays shutdown by at most that long
                reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
                self._twisted_receive_pool = pool
        return pool

    # -- asyncio ----------------------------------------------------------------

    async def receive_async(self, channels: Iterable[str]) -> Received:
        """Coroutine: ``(channel, message)``, or ``(None, None)`` after a bounded wait."""
        names = spec.validate_channel_list(channels)
        if not names:
            return None, None
        receive = self._receive(self._receive_targets(names))
        return await receive.run_async(self.extension_receive_timeout, self._async_clients().mirror)

    async def close_async(self) -> None:
        """Close the redis.asyncio connections this layer opened on the running loop."""
        clients = self._async_clients_by_loop.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.close()

    def _async_clients(self) -> _AsyncClients:
        loop = asyncio.get_running_loop()
        clients = self._async_clients_by_loop.get(loop)
        if clients is None:
            with self._extensions_lock:
                clients = self._async_clients_by_loop.get(loop)
                if clients is None:
                    clients = self._async_clients_by_loop[loop] = _AsyncClients(self.connection_kwargs)
                    # the clients refer to their loop, so the weak mapping alone never drops them
                    if self.close_async not in loop_scope.pending_closers(loop):
                        loop_scope.close_with_loop(loop, self.close_async)
        return clients


class _AsyncClients:
    """redis.asyncio twins of a layer's shard clients, for one event loop."""

    def __init__(self, connection_kwargs: Dict[str, Any]):
        self.connection_kwargs = connection_kwargs
        self.clients: Dict[Tuple[int, int], Any] = {}

    def mirror(self, shards: ShardSet, index: int) -> Any:
        """The async client for shard ``index``, or None when this shard set cannot be mirrored."""
        key = (id(shards), index)
        if key not in self.clients:
            self.clients[key] = self._make(shards, index)
        return self.clients[key]

    def _make(self, shards: ShardSet, index: int) -> Any:
        # Only plain host lists are mirrored: a subclass (Sentinel, local) may
        # pick its client differently, and then the executor path is right.
        if type(shards).client is not HostShards.client or not isinstance(shards, HostShards):
            return None
        return make_async_client(shards.hosts[index], self.connection_kwargs)

    async def close(self) -> None:
        for client in self.clients.values():
            if client is not None:
                await client.aclose() if hasattr(client, "aclose") else await client.close()
        self.clients.clear()
