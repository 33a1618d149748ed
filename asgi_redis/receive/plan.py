"""The I/O-free plan of one receive: a generator of Redis calls (steps).

:meth:`ReceivePlan.steps` yields one :class:`Step` at a time and is sent its
reply (or has the step's connection error thrown in); whoever performs the
calls (blocking redis-py, redis.asyncio, a Twisted pool thread: see
``driver.py``) plays no part in the search itself.

A non-blocking receive asks the layout's pop script once per target (1 round
trip each), stopping at the first message. A blocking one does that sweep
first, so a waiting message costs one round trip, then waits with BLPOP; what
the popped element means (a body key needing a second call in the classic
layout, an inline body in another) is the layout's ``after_wait``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import sys
import time
from typing import Any, Dict, Generator, List, NamedTuple, Optional, Tuple

from ..connections import ShardSet
from ..errors import LayerConnectionError
from ..layouts.base import Call
from .port import NOTHING, Found, LayerPort, Received, Target

logger = logging.getLogger("asgi_redis")

POP = "pop"  # the layout's pop call: a Popped or None
BLPOP = "blpop"  # BLPOP on ``keys`` for ``timeout`` seconds: (queue key, element) or None
FOLLOW_UP = "follow_up"  # the layout's call after a BLPOP (classic: take_body)
PAUSE = "pause"  # no call: ``timeout`` seconds of rest before a failed wait is tried again


class Step(NamedTuple):
    """One Redis call a receive needs, on one shard: a layout ``call``, or a BLPOP
    (or a PAUSE, which calls nothing)."""

    kind: str
    shards: ShardSet
    index: int
    keys: List[Any]
    timeout: float = 0.0
    call: Optional[Call] = None


Steps = Generator[Step, Any, Received]


class ReceivePlan:
    """The targets (shard, queue keys) of one receive call, and how to search them."""

    def __init__(self, port: LayerPort, targets: List[Target], turn: int):
        self.port = port
        self.layout = port.layout
        # each call starts at the next shard, so no shard is always looked at last;
        # shard sets keep the layer's order (the local layer asks its own Redis first)
        per_set: Dict[int, List[Target]] = {}
        for target in targets:
            per_set.setdefault(id(target[0]), []).append(target)
        self.targets: List[Target] = []
        for group in per_set.values():
            start = turn % len(group)
            self.targets += group[start:] + group[:start]

    def steps(self, block: bool, timeout: Optional[float] = None) -> Steps:
        """The receive as a generator of :class:`Step`; each yield is sent the call's reply.

        A blocking receive waits up to ``timeout`` seconds (default: the
        layer's ``blpop_timeout``), then returns ``(None, None)``.
        """
        wait = self.port.blpop_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait if block else 0.0
        while True:
            found, dropped = yield from self._sweep()
            if found is not None:
                return found
            if dropped:
                continue  # an undecodable body was discarded; look again at once
            if not block:
                return NOTHING
            found = yield from self._wait(deadline)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return NOTHING

    def _sweep(self) -> Generator[Step, Any, Tuple[Optional[Found], bool]]:
        """One pop call per target; (message or None, whether one was dropped)."""
        dropped = False
        failed: List[Target] = []  # failed now, expected back soon (see LayerPort.wait_goes_on)
        for target in list(self.targets):
            shards, index, keys = target
            if len(keys) > 1:
                keys = random.sample(keys, len(keys))  # no channel starves the others
            popped = self.layout.take_pending(keys)
            if popped is None:
                try:
                    reply = yield Step(POP, shards, index, keys, call=self.layout.pop_call(keys))
                except LayerConnectionError as error:
                    # the pop is not sent again (its reply may have held a message); a
                    # target the layer expects back is kept for the wait that follows
                    self._lost(target, keep=failed if self.port.wait_goes_on(error) is not None else None)
                    continue
                popped = self.layout.read_pop(reply)
            if popped is not None:
                found = self.port.decode(popped)
                if found is not None:
                    return found, False
                dropped = True
        return None, dropped

    def _wait(self, deadline: float) -> Generator[Step, Any, Optional[Found]]:
        """BLPOP until a message arrives or the deadline passes; None for nothing."""
        slice_length = None if len(self.targets) == 1 else self.port.shard_poll_interval
        failure: Optional[LayerConnectionError] = None  # of the last wait, if it failed
        while True:
            for target in list(self.targets):
                shards, index, keys = target
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if failure is not None:
                        raise failure  # the time is up, and the last try to wait failed
                    return None
                try:
                    timeout = min(remaining, slice_length or remaining, block_limit(shards.client(index)))
                    reply = yield Step(BLPOP, shards, index, keys, timeout)
                except LayerConnectionError as error:
                    # A wait that broke took nothing we could see (a BLPOP whose reply was
                    # lost may have popped a message on the server: that one is lost, never
                    # delivered twice). When the layer expects the shard back (a cluster
                    # failing over), wait again after a pause instead of failing.
                    pause = self.port.wait_goes_on(error)
                    if pause is None:
                        self._lost(target)
                        return None  # look again on the shards left
                    if failure is None:  # once per outage, not at every try
                        logger.warning("receive waits on through a failure: %s", error)
                    failure = error
                    yield Step(PAUSE, shards, index, [], max(0.0, min(pause, deadline - time.monotonic())))
                    continue
                failure = None
                if not reply:
                    continue
                outcome = self.layout.after_wait(reply[0], reply[1])
                if isinstance(outcome, Call):
                    follow_up = yield Step(FOLLOW_UP, shards, index, list(outcome.keys), call=outcome)
                    outcome = self.layout.after_follow_up(reply[0], follow_up)
                if outcome is None:
                    continue  # the message expired while it sat in the queue
                found = self.port.decode(outcome)
                if found is not None:
                    return found

    def _lost(self, target: Target, keep: Optional[List[Target]] = None) -> None:
        """A shard failed: go on with the others; with none left, the error stands.

        Normal channels are spread over every shard, so one shard down must not
        stop receives from the others (nothing was popped from the failed one).
        With ``keep`` (the targets that failed in this sweep and are expected
        back) the target is skipped for now, not dropped."""
        error = sys.exc_info()[1]
        gone = keep if keep is not None else []
        remaining = [kept for kept in self.targets if kept is not target and kept not in gone]
        if not remaining:
            raise error  # type: ignore[misc]
        logger.warning("receive goes on without a shard: %s", error)
        if keep is not None:
            keep.append(target)
        else:
            self.targets = [kept for kept in self.targets if kept is not target]


def block_limit(client: Any) -> float:
    """Longest BLPOP whose reply still arrives inside the client's socket timeout."""
    pool = client.connection_pool
    default = default_socket_timeout(pool.connection_class)
    socket_timeout = pool.connection_kwargs.get("socket_timeout", default)
    if not socket_timeout:
        return math.inf
    return max(0.01, socket_timeout - min(1.0, socket_timeout / 2))


@functools.cache
def default_socket_timeout(connection_class: type) -> Optional[float]:
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
