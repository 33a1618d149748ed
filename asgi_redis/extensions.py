"""The ``twisted`` and ``asyncio`` extensions: receives that do not block a loop.

Both keep the semantics of a blocking :meth:`receive` (``!`` and ``?``
channels, sharding, encryption, expiry, bodies deleted on read) because both
run the core's :class:`~asgi_redis.receiving.ReceivePlan`; only who performs
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
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

import redis
from redis.exceptions import NoScriptError

from . import exhaustion, loop_scope, scripts, spec
from .connections import HostShards
from .errors import LayerConnectionError
from .receiving import (
    BLPOP,
    POP,
    TAKE_BODY,
    ReceivePlan,
    Step,
    Steps,
    blpop_timeout,
    next_step,
    refuses_fractional_timeout,
    run_guarded,
)

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

    from .connections import ShardSet

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

    def _extension_names(self) -> List[str]:
        return (["twisted"] if twisted_available() else []) + ["asyncio"]

    # -- Twisted ----------------------------------------------------------------

    def receive_twisted(self, channels: Iterable[str]) -> Deferred:
        """A Deferred firing ``(channel, message)``, or ``(None, None)`` after a bounded wait.

        Must be called from the reactor thread. Bad channel names fail the
        Deferred with ``TypeError``.
        """
        from twisted.internet import defer, reactor, threads

        try:
            names = spec.validate_channel_list(channels)
        except (TypeError, ValueError):
            return defer.fail()
        if not names:
            return defer.succeed((None, None))
        plan = ReceivePlan(self, self._receive_targets(names), next(self._receive_turn))
        deadline = time.monotonic() + self.extension_receive_timeout
        steps = plan.steps(True, self.extension_receive_timeout)
        # The look at waiting messages (pop.lua, one round trip per shard) runs
        # here in the reactor thread, as daphne's own sends do: a message that
        # is already there costs no thread hand-off. Only a wait (BLPOP) goes
        # to the pool, which carries the same plan on from that step.
        try:
            found, wait = _drive(self, steps, None, until_wait=True)
        except Exception:
            return defer.fail()
        if wait is None:
            return defer.succeed(found)
        pool = self._twisted_pool(reactor)
        if len(plan.targets) > 1:
            # several servers: the core's wait on all of them at once (waiting.py)
            steps.close()
            return threads.deferToThreadPool(reactor, pool, plan.run, True, max(0.0, deadline - time.monotonic()))
        return threads.deferToThreadPool(reactor, pool, _finish, self, steps, wait)

    def _twisted_pool(self, reactor: Any) -> Any:
        pool = getattr(self, "_twisted_receive_pool", None)
        if pool is not None and not pool.joined:
            return pool
        with _pool_lock:
            pool = getattr(self, "_twisted_receive_pool", None)
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
        plan = ReceivePlan(self, self._receive_targets(names), next(self._receive_turn))
        clients = self._async_clients()
        # Several servers: the core's wait on all of them at once (waiting.py)
        # runs in a thread; waiting on each in turn would be bounded by Redis's hz tick.
        if len(plan.targets) > 1 or not all(clients.mirror(shards, index) for shards, index, _ in plan.targets):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, plan.run, True, self.extension_receive_timeout)
        steps = plan.steps(True, self.extension_receive_timeout)
        reply, error = None, None
        while True:
            try:
                step = next_step(steps, reply, error)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            try:
                with self._guard(step.shards, step.index, "receive"):
                    reply = await _run_step_async(self, clients.mirror(step.shards, step.index), step)
            except LayerConnectionError as failed:
                error = failed

    async def close_async(self) -> None:
        """Close the redis.asyncio connections this layer opened on the running loop."""
        clients = _loop_clients(self).pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.close()

    def _async_clients(self) -> _AsyncClients:
        per_loop = _loop_clients(self)
        loop = asyncio.get_running_loop()
        clients = per_loop.get(loop)
        if clients is None:
            clients = per_loop[loop] = _AsyncClients(self.connection_kwargs)
            # the clients refer to their loop, so the weak mapping alone never drops them
            if self.close_async not in loop_scope.pending_closers(loop):
                loop_scope.close_with_loop(loop, self.close_async)
        return clients


_pool_lock = threading.Lock()


def _drive(
    layer: Any, steps: Steps, reply: Any, until_wait: bool, error: Optional[BaseException] = None
) -> Tuple[Received, Optional[Step]]:
    """Answer ``steps`` with blocking calls: (result, None), or (None, the BLPOP step) when asked to stop there."""
    while True:
        try:
            step = next_step(steps, reply, error)
        except StopIteration as done:
            return done.value, None
        if until_wait and step.kind == BLPOP:
            return (None, None), step
        reply, error = run_guarded(layer, step)


def _finish(layer: Any, steps: Steps, wait: Step) -> Received:
    """In a pool thread: the wait a receive stopped at, then the rest of its plan."""
    reply, error = run_guarded(layer, wait)
    return _drive(layer, steps, reply, until_wait=False, error=error)[0]


def _loop_clients(layer: Any) -> weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncClients]:
    per_loop = getattr(layer, "_async_clients_by_loop", None)
    if per_loop is None:
        with _pool_lock:
            per_loop = getattr(layer, "_async_clients_by_loop", None)
            if per_loop is None:
                per_loop = layer._async_clients_by_loop = weakref.WeakKeyDictionary()
    return per_loop


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
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no blind retries, as for the sync clients (connections.py): at most once
        kwargs = {**exhaustion.client_defaults(self.connection_kwargs), **self.connection_kwargs,
                  "retry": Retry(NoBackoff(), 0)}
        host = shards.hosts[index]
        try:
            if isinstance(host, str):
                return redis.asyncio.Redis.from_url(host, **kwargs)
            return redis.asyncio.Redis(host=host[0], port=host[1], **kwargs)
        except TypeError:
            return None  # a connection keyword only the sync client knows

    async def close(self) -> None:
        for client in self.clients.values():
            if client is not None:
                await client.aclose() if hasattr(client, "aclose") else await client.close()
        self.clients.clear()


async def _run_step_async(layer: Any, client: Any, step: Step) -> Any:
    if step.kind == POP:
        return await _run_script(scripts.POP, client, step.keys)
    if step.kind == TAKE_BODY:
        return await _run_script(scripts.TAKE_BODY, client, step.keys)
    try:
        return await client.blpop(step.keys, timeout=blpop_timeout(layer, step.timeout))
    except redis.ResponseError as error:
        if not refuses_fractional_timeout(layer, error):
            raise
        return await client.blpop(step.keys, timeout=blpop_timeout(layer, step.timeout))


async def _run_script(script: scripts.LuaScript, client: Any, keys: List[Any]) -> Any:
    # NOSCRIPT means the script did not run, so loading and rerunning repeats nothing
    try:
        return await client.evalsha(script.sha, len(keys), *keys)
    except NoScriptError:
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys)
