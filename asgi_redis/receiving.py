"""How one receive() call finds a message across shards.

A non-blocking receive runs pop.lua once per shard that may hold one of the
channels (1 round trip each), stopping at the first message. A blocking one
does that sweep first, so a waiting message costs one round trip, then waits
with BLPOP and fetches the body with take_body.lua (2 round trips).

BLPOP can only wait on one server, and Redis ends a short BLPOP only at its
next ``hz`` tick (100 ms by default), so a blocking receive spanning several
servers sends a BLPOP to each at once and takes the first answer
(``waiting.py``); 1.4.3 sat up to 5 s on one shard while messages waited on
another. Servers that cannot cancel a wait (Redis < 5) are waited on in turn.

The search itself is I/O-free: :meth:`ReceivePlan.steps` is a generator that
yields one :class:`Step` (a Redis call) at a time and is sent its reply.
:meth:`ReceivePlan.run` answers the steps with blocking redis-py calls; the
asyncio extension (``extensions.py``) answers the same steps with
``redis.asyncio``, so sync and async receives share one implementation.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, List, NamedTuple, Optional, Tuple

import redis

from . import scripts, waiting
from .errors import LayerConnectionError

logger = logging.getLogger("asgi_redis")

if TYPE_CHECKING:  # pragma: no cover
    from .connections import ShardSet
    from .core import RedisChannelLayer

Found = Tuple[str, dict]
_NOTHING: Tuple[None, None] = (None, None)


POP = "pop"  # pop.lua on ``keys``: (queue key, body) or None
BLPOP = "blpop"  # BLPOP on ``keys`` for ``timeout`` seconds: (queue key, body key) or None
TAKE_BODY = "take_body"  # take_body.lua on ``keys`` ([body key]): the body or None


class Step(NamedTuple):
    """One Redis call a receive needs, on one shard."""

    kind: str
    shards: ShardSet
    index: int
    keys: List[Any]
    timeout: float = 0.0


Steps = Generator[Step, Any, Tuple[Optional[str], Optional[dict]]]


class ReceivePlan:
    """The shards and queue keys of one receive call."""

    def __init__(self, layer: RedisChannelLayer, targets: List[Tuple[ShardSet, int, List[str]]], turn: int):
        self.layer = layer
        # each call starts at the next shard, so no shard is always looked at last;
        # shard sets keep the layer's order (the local layer asks its own Redis first)
        per_set: Dict[int, list] = {}
        for target in targets:
            per_set.setdefault(id(target[0]), []).append(target)
        self.targets = []
        for group in per_set.values():
            start = turn % len(group)
            self.targets += group[start:] + group[:start]

    def run(
        self,
        block: bool,
        timeout: Optional[float] = None,
        poll: Optional[Callable[[], Tuple[Optional[str], Optional[dict]]]] = None,
        poll_interval: float = 0.02,
    ) -> Tuple[Optional[str], Optional[dict]]:
        """Carry out the receive with blocking redis-py calls.

        ``poll``, if given, is a non-blocking look at another transport (the
        local layer's), made before each look at Redis and every
        ``poll_interval`` seconds while waiting.
        """
        if poll is None and (not block or len(self.targets) == 1):
            return self.run_steps(block, timeout)
        # Several servers: BLPOP on each at once and take the first answer
        # (waiting.py); waiting on each in turn would be bounded by Redis's hz
        # tick, 100 ms by default, however short the slices.
        deadline = time.monotonic() + (self.layer.blpop_timeout if timeout is None else timeout)
        while True:
            found = poll() if poll is not None else _NOTHING
            if found[0] is None:
                found = self.run_steps(False)
            remaining = deadline - time.monotonic()
            if found[0] is not None or not block or remaining <= 0:
                return found
            if self.layer._client_unblock is not False:
                found = waiting.wait_everywhere(self.layer, self.targets, deadline, poll, poll_interval)
            else:  # Redis < 5 or an ACL without CLIENT UNBLOCK: wait in turns
                found = self.run_steps(True, min(remaining, poll_interval if poll else remaining))
            if found[0] is not None:
                return found

    def run_steps(self, block: bool, timeout: Optional[float] = None) -> Tuple[Optional[str], Optional[dict]]:
        """Carry out :meth:`steps` with blocking redis-py calls."""
        steps = self.steps(block, timeout)
        reply, error = None, None
        while True:
            try:
                step = next_step(steps, reply, error)
            except StopIteration as done:
                return done.value
            reply, error = run_guarded(self.layer, step)

    def steps(self, block: bool, timeout: Optional[float] = None) -> Steps:
        """The receive as a generator of :class:`Step`; each yield is sent the call's reply.

        A blocking receive waits up to ``timeout`` seconds (default: the
        layer's ``blpop_timeout``), then returns ``(None, None)``.
        """
        wait = self.layer.blpop_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait if block else 0.0
        while True:
            found, dropped = yield from self._sweep()
            if found is not None:
                return found
            if dropped:
                continue  # an undecodable body was discarded; look again at once
            if not block:
                return _NOTHING
            found = yield from self._wait(deadline)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return _NOTHING

    def _sweep(self) -> Generator[Step, Any, Tuple[Optional[Found], bool]]:
        """One pop.lua call per shard; (message or None, whether one was dropped)."""
        dropped = False
        for target in list(self.targets):
            shards, index, keys = target
            if len(keys) > 1:
                keys = random.sample(keys, len(keys))  # no channel starves the others
            try:
                reply = yield Step(POP, shards, index, keys)
            except LayerConnectionError:
                self._lost(target)
                continue
            if reply:
                found = self.layer._decode(reply[0], reply[1])
                if found is not None:
                    return found, False
                dropped = True
        return None, dropped

    def _wait(self, deadline: float) -> Generator[Step, Any, Optional[Found]]:
        """BLPOP until a message arrives or the deadline passes; None for nothing."""
        slice_length = None if len(self.targets) == 1 else self.layer.shard_poll_interval
        while True:
            for target in list(self.targets):
                shards, index, keys = target
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                timeout = min(remaining, slice_length or remaining, _block_limit(shards.client(index)))
                try:
                    reply = yield Step(BLPOP, shards, index, keys, timeout)
                except LayerConnectionError:
                    self._lost(target)
                    return None  # look again on the shards left
                if not reply:
                    continue
                body = yield Step(TAKE_BODY, shards, index, [reply[1]])
                if body is None:
                    continue  # the body expired while its key sat in the queue
                found = self.layer._decode(reply[0], body)
                if found is not None:
                    return found


    def _lost(self, target: Tuple[ShardSet, int, List[str]]) -> None:
        """A shard failed: go on with the others; with none left, the error stands.

        Normal channels are spread over every shard, so one shard down must not
        stop receives from the others (nothing was popped from the failed one)."""
        error = sys.exc_info()[1]
        remaining = [kept for kept in self.targets if kept is not target]
        if not remaining:
            raise error
        logger.warning("receive goes on without a shard: %s", error)
        self.targets = remaining


def next_step(steps: Steps, reply: Any, error: Optional[BaseException]) -> Step:
    """Advance a plan: send it the last step's reply, or throw that step's connection error in."""
    if error is not None:
        return steps.throw(error)
    return steps.send(reply)


def run_guarded(layer: Any, step: Step) -> Tuple[Any, Optional[LayerConnectionError]]:
    """``(reply, None)``, or ``(None, error)`` when the step's shard failed (see ``_lost``)."""
    try:
        with layer._guard(step.shards, step.index, "receive"):
            return run_step(layer, step), None
    except LayerConnectionError as error:
        return None, error


def run_step(layer: Any, step: Step) -> Any:
    """One step with blocking redis-py calls (the twisted extension drives plans with it too)."""
    client = step.shards.client(step.index)
    if step.kind == POP:
        return scripts.POP(client, step.keys)
    if step.kind == TAKE_BODY:
        return scripts.TAKE_BODY(client, step.keys)
    return _blpop(layer, client, step.keys, step.timeout)


def _block_limit(client: Any) -> float:
    """Longest BLPOP whose reply still arrives inside the client's socket timeout."""
    pool = client.connection_pool
    default = _default_socket_timeout(pool.connection_class)
    socket_timeout = pool.connection_kwargs.get("socket_timeout", default)
    if not socket_timeout:
        return math.inf
    return max(0.01, socket_timeout - min(1.0, socket_timeout / 2))


@functools.cache
def _default_socket_timeout(connection_class: type) -> Optional[float]:
    # redis-py 8 reads with a 5 s socket timeout unless told otherwise (earlier
    # versions: none), so a 5 s BLPOP would time out on the socket first
    for klass in connection_class.__mro__:
        try:
            parameter = inspect.signature(klass.__init__).parameters.get("socket_timeout")
        except (TypeError, ValueError):
            continue
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def blpop_timeout(layer: Any, timeout: float) -> float:
    """The BLPOP timeout to send: Redis < 6 takes whole seconds only (and 0 means forever)."""
    if getattr(layer, "_whole_second_timeouts", False):
        return max(1, math.ceil(timeout))
    return max(0.01, round(timeout, 3))


def refuses_fractional_timeout(layer: Any, error: redis.ResponseError) -> bool:
    """True (and remembered on the layer) when ``error`` is an old Redis refusing a fractional timeout."""
    if "timeout" not in str(error) or getattr(layer, "_whole_second_timeouts", False):
        return False
    layer._whole_second_timeouts = True
    return True


def _blpop(layer: Any, client: Any, keys: List[str], timeout: float) -> Any:
    try:
        return client.blpop(keys, timeout=blpop_timeout(layer, timeout))
    except redis.ResponseError as error:
        if not refuses_fractional_timeout(layer, error):
            raise
        return client.blpop(keys, timeout=blpop_timeout(layer, timeout))
