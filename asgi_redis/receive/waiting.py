"""Waiting on several Redis servers at once, for one blocking receive.

BLPOP waits on one server only, and Redis honours a short BLPOP timeout only
at its next ``hz`` tick (every 100 ms by default), so waiting on each server
in turn for a short slice cannot see a message on any of them within 50 ms.
:class:`PendingPops` sends every server a BLPOP at once (with CLIENT ID in the
same write, so that costs no extra round trip), waits for the first reply
with a poll/epoll selector, and cancels the others with CLIENT UNBLOCK
(Redis 5 or newer).

``select.select`` cannot watch a descriptor above 1,023 ("filedescriptor out
of range in select()"), which a busy process (daphne with many WebSockets)
reaches; poll and epoll have no such limit. Poll is preferred because it
needs no descriptor of its own (epoll does), which matters to a process
close to its descriptor limit.
"""

from __future__ import annotations

import math
import selectors
import time
from typing import Any, Callable, List, Optional, Tuple

import redis

from .. import exhaustion, scripts
from ..layouts.base import Call
from .port import NOTHING, LayerPort, Received, Target

_Selector = getattr(selectors, "PollSelector", selectors.DefaultSelector)


class NoClientUnblock(Exception):
    """The server has no CLIENT ID / CLIENT UNBLOCK (Redis < 5)."""


class PendingPops:
    """One BLPOP in flight on each target's server: start, :meth:`wait`, :meth:`finish`.

    Raises :class:`NoClientUnblock` at start when a server has no CLIENT ID;
    ``unblock_refused`` is set when one refused CLIENT UNBLOCK (an ACL), and
    the caller should then wait some other way.
    """

    def __init__(self, port: LayerPort, targets: List[Target], timeout: float):
        self.port = port
        self.pending: List[list] = []  # [target, connection, client id]
        self.unblock_refused = False
        # whole seconds work on every Redis; we cancel at our own, exact deadline
        seconds = max(1, math.ceil(timeout))
        try:
            for target in targets:
                shards, index, keys = target
                with port.guard(shards, index, "receive"):
                    connection = shards.client(index).connection_pool.get_connection()
                    self.pending.append([target, connection, None])
                    connection.send_packed_command(
                        connection.pack_commands([("CLIENT", "ID"), ("BLPOP", *keys, seconds)])
                    )
            for entry in self.pending:
                shards, index, _ = entry[0]
                with port.guard(shards, index, "receive"):
                    entry[2] = entry[1].read_response()
        except redis.ResponseError as error:
            self._abandon()
            raise NoClientUnblock(str(error)) from error
        except BaseException:
            self._abandon()
            raise

    def wait(self, timeout: float) -> bool:
        """True once some BLPOP has answered (or its connection broke: finish() reports it)."""
        try:
            if any(connection.can_read(0) for _, connection, _ in self.pending):
                return True
        except (redis.ConnectionError, OSError):
            return True
        with _Selector() as selector:
            for _, connection, _ in self.pending:
                selector.register(connection._sock, selectors.EVENT_READ)
            return bool(selector.select(max(0.0, timeout)))

    def finish(self) -> List[Tuple[Target, Any]]:
        """Cancel the BLPOPs still waiting; the ``(target, (queue key, element))`` of those that popped."""
        popped = []
        failure: Optional[BaseException] = None
        for target, connection, client_id in self.pending:
            shards, index, _ = target
            try:
                with self.port.guard(shards, index, "receive"):
                    if not connection.can_read(0) and not self._unblock(shards.client(index), client_id):
                        # closing the connection ends its BLPOP instead (a message popped
                        # at that very moment is lost: at most once)
                        connection.disconnect()
                        shards.client(index).connection_pool.release(connection)
                        continue
                    # nil when cancelled; a message when it won the race against the cancel
                    reply = connection.read_response()
            except BaseException as error:  # release every connection before raising
                connection.disconnect()
                failure = failure or error
                reply = None
            shards.client(index).connection_pool.release(connection)
            if reply:
                popped.append((target, reply))
        self.pending = []
        if failure is not None and not popped:
            raise failure
        # a message another server popped is delivered, not lost with the failure
        # (the failed server shows up again at the next call)
        return popped

    def _unblock(self, client: redis.Redis, client_id: int) -> bool:
        try:
            client.execute_command("CLIENT", "UNBLOCK", client_id)
            return True
        except redis.ResponseError:
            self.unblock_refused = True  # an ACL user without CLIENT UNBLOCK
            return False
        except (redis.ConnectionError, OSError) as error:
            # no second connection to be had (out of descriptors, maxclients): end the
            # wait by closing its socket, so a message another wait popped is not lost
            if not exhaustion.is_exhaustion(error):
                raise
            return False

    def _abandon(self) -> None:
        # a BLPOP may still be queued on these connections: never reuse them
        for target, connection, _ in self.pending:
            connection.disconnect()
            target[0].client(target[1]).connection_pool.release(connection)
        self.pending = []


def wait_everywhere(
    port: LayerPort,
    targets: List[Target],
    deadline: float,
    poll: Optional[Callable[[], Received]] = None,
    poll_interval: float = 0.02,
) -> Received:
    """One BLPOP on every target's server at once, until a message or the deadline.

    ``poll`` (a non-blocking look at another transport) runs every
    ``poll_interval`` seconds meanwhile. Tells ``port.quirks`` when a server
    cannot cancel a wait, so later calls wait in turns.
    """
    try:
        pops = PendingPops(port, targets, deadline - time.monotonic())
    except NoClientUnblock:
        port.quirks.no_client_unblock()
        return NOTHING
    found: Received = NOTHING
    try:
        while True:
            remaining = deadline - time.monotonic()
            if poll is not None:
                remaining = min(remaining, poll_interval)
            if remaining <= 0 or pops.wait(remaining):
                break
            if poll is not None:
                found = poll()
                if found[0] is not None:
                    break
    finally:
        popped = pops.finish()
        if pops.unblock_refused:
            port.quirks.no_client_unblock()
    if found[0] is not None:
        _push_back(port, popped)
        return found
    layout = port.layout
    for position, (target, (queue_key, element)) in enumerate(popped):
        shards, index, _ = target
        outcome = layout.after_wait(queue_key, element)
        if isinstance(outcome, Call):
            with port.guard(shards, index, "receive"):
                reply = scripts.run(shards.client(index), [outcome])[0]
            outcome = layout.after_follow_up(queue_key, reply)
        decoded = port.decode(outcome) if outcome is not None else None
        if decoded is not None:
            _push_back(port, popped[position + 1:])
            return decoded
    return NOTHING


def _push_back(port: LayerPort, popped: List[Tuple[Target, Any]]) -> None:
    """Return elements popped by cancelled waits to the head of their queues.

    Nobody has seen these messages: putting them back loses nothing and
    delivers nothing twice."""
    for (shards, index, _), (queue_key, element) in popped:
        with port.guard(shards, index, "receive"):
            scripts.run(shards.client(index), port.layout.push_back(queue_key, element))
