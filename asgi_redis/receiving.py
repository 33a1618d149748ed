"""How one receive() call finds a message across shards.

A non-blocking receive runs pop.lua once per shard that may hold one of the
channels (1 round trip each), stopping at the first message. A blocking one
does that sweep first, so a waiting message costs one round trip, then waits
with BLPOP and fetches the body with take_body.lua (2 round trips).

BLPOP can only wait on one server. With several shards we wait on each for
a short slice in turn instead of on one for the whole timeout (1.4.3 sat up
to 5 s on one shard while messages waited on another), so a message on any
shard is seen within about one slice.
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import redis

from . import scripts

if TYPE_CHECKING:  # pragma: no cover
    from .connections import ShardSet
    from .core import RedisChannelLayer

Found = Tuple[str, dict]
_NOTHING: Tuple[None, None] = (None, None)


class ReceivePlan:
    """The shards and queue keys of one receive call."""

    def __init__(self, layer: "RedisChannelLayer", targets: List[Tuple["ShardSet", int, List[str]]], turn: int):
        self.layer = layer
        # each call starts at the next shard, so no shard is always looked at last
        start = turn % len(targets)
        self.targets = targets[start:] + targets[:start]

    def run(self, block: bool) -> Tuple[Optional[str], Optional[dict]]:
        deadline = time.monotonic() + self.layer.blpop_timeout if block else 0.0
        while True:
            found, dropped = self._sweep()
            if found is not None:
                return found
            if dropped:
                continue  # an undecodable body was discarded; look again at once
            if not block:
                return _NOTHING
            found = self._wait(deadline)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return _NOTHING

    def _sweep(self) -> Tuple[Optional[Found], bool]:
        """One pop.lua call per shard; (message or None, whether one was dropped)."""
        dropped = False
        for shards, index, keys in self.targets:
            if len(keys) > 1:
                keys = random.sample(keys, len(keys))  # no channel starves the others
            with self.layer._guard(shards, index, "receive"):
                reply = scripts.POP(shards.client(index), keys)
            if reply:
                found = self.layer._decode(reply[0], reply[1])
                if found is not None:
                    return found, False
                dropped = True
        return None, dropped

    def _wait(self, deadline: float) -> Optional[Found]:
        """BLPOP until a message arrives or the deadline passes; None for nothing."""
        slice_length = None if len(self.targets) == 1 else self.layer.shard_poll_interval
        while True:
            for shards, index, keys in self.targets:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                client = shards.client(index)
                timeout = min(remaining, slice_length or remaining, _block_limit(client))
                with self.layer._guard(shards, index, "receive"):
                    reply = _blpop(self.layer, client, keys, timeout)
                    if not reply:
                        continue
                    body = scripts.TAKE_BODY(client, [reply[1]])
                if body is None:
                    continue  # the body expired while its key sat in the queue
                found = self.layer._decode(reply[0], body)
                if found is not None:
                    return found


def _block_limit(client: Any) -> float:
    """Longest BLPOP whose reply still arrives inside the client's socket timeout."""
    socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if not socket_timeout:
        return math.inf
    return max(0.01, socket_timeout - min(1.0, socket_timeout / 2))


def _blpop(layer: Any, client: Any, keys: List[str], timeout: float) -> Any:
    # Redis < 6 takes whole seconds only (and 0 would mean "forever")
    if getattr(layer, "_whole_second_timeouts", False):
        return client.blpop(keys, timeout=max(1, math.ceil(timeout)))
    try:
        return client.blpop(keys, timeout=max(0.01, round(timeout, 3)))
    except redis.ResponseError as error:
        if "timeout" not in str(error):
            raise
        layer._whole_second_timeouts = True
        return client.blpop(keys, timeout=max(1, math.ceil(timeout)))
