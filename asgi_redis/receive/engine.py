"""The one place that decides how a receive is carried out.

One server: drive the plan's steps (blocking calls, redis.asyncio calls, or
the reactor thread then a Twisted pool thread). Several servers, or another
transport to poll (the local layer's ``local_layer``): a non-blocking sweep,
then one wait on every server at once (``waiting.py``), in the calling
thread, in the asyncio loop's executor or in the Twisted pool. Waiting on
each server in turn would be bounded by Redis's ``hz`` tick, 100 ms by
default, however short the slices; servers that cannot cancel a wait
(Redis < 5, see :class:`~asgi_redis.receive.quirks.ServerQuirks`) are
nevertheless waited on in turn.

A wait that fails ends the receive with the error, unless the layer expects
the server back soon (``LayerPort.wait_goes_on``: a cluster promoting a
replica); then the receive pauses and waits again, up to its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, List, Optional

from ..connections import ShardSet
from ..errors import LayerConnectionError
from .driver import Driver, StepRunner
from .plan import ReceivePlan, Step
from .port import NOTHING, LayerPort, Received, Target
from .waiting import wait_everywhere

logger = logging.getLogger("asgi_redis")

Poll = Callable[[], Received]
ClientFor = Callable[[ShardSet, int], Any]


class Receive:
    """One receive call: its plan, and the way it is carried out."""

    def __init__(self, port: LayerPort, targets: List[Target], turn: int,
                 poll: Optional[Poll] = None, poll_interval: float = 0.02) -> None:
        self.port = port
        self.plan = ReceivePlan(port, targets, turn)
        self.runner = StepRunner(port)
        self.poll = poll  # a non-blocking look at another transport, made before each look at Redis
        self.poll_interval = poll_interval

    def on_one_server(self) -> bool:
        """The decision: True when driving the plan's steps is the whole receive."""
        return self.poll is None and len(self.plan.targets) == 1

    # -- blocking ----------------------------------------------------------------------

    def run(self, block: bool, timeout: Optional[float] = None) -> Received:
        """Carry out the receive with blocking redis-py calls."""
        if self.on_one_server() or (not block and self.poll is None):
            return self.run_steps(block, timeout)
        deadline = time.monotonic() + (self.port.blpop_timeout if timeout is None else timeout)
        waiting = failing = False
        while True:
            try:
                found = self.poll() if self.poll is not None else NOTHING
                if found[0] is None:
                    found = self.run_steps(False)
                remaining = deadline - time.monotonic()
                if found[0] is not None or not block or remaining <= 0:
                    return found
                waiting = True
                if self.port.quirks.client_unblock is not False:
                    found = wait_everywhere(self.port, self.plan.targets, deadline, self.poll, self.poll_interval)
                else:  # Redis < 5 or an ACL without CLIENT UNBLOCK: wait in turns
                    found = self.run_steps(True, min(remaining, self.poll_interval if self.poll else remaining))
            except LayerConnectionError as error:
                # once waiting, a failure the layer expects to heal (a cluster failing
                # over) is waited out: look again after a pause, until the deadline
                pause = self.port.wait_goes_on(error) if waiting else None
                if pause is None or deadline - time.monotonic() <= 0:
                    raise
                if not failing:  # once per receive, not at every try
                    logger.warning("receive waits on through a failure: %s", error)
                failing = True
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                continue
            if found[0] is not None:
                return found

    def run_steps(self, block: bool, timeout: Optional[float] = None) -> Received:
        """The plan's steps, answered with blocking calls."""
        driver = Driver(self.plan.steps(block, timeout))
        self.runner.drive(driver)
        return driver.result

    # -- asyncio -----------------------------------------------------------------------

    async def run_async(self, timeout: float, client_for: ClientFor) -> Received:
        """Blocking receive in an asyncio loop; ``client_for(shards, index)`` is the
        shard's redis.asyncio client, or None when its shard set cannot be mirrored."""
        if not self.on_one_server() or any(
            client_for(shards, index) is None for shards, index, _ in self.plan.targets
        ):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.run, True, timeout)
        return await self.runner.drive_async(Driver(self.plan.steps(True, timeout)), client_for)

    # -- Twisted -----------------------------------------------------------------------

    def run_twisted(self, timeout: float, defer_to_pool: Callable[..., Any]) -> Any:
        """Blocking receive from the reactor thread: the look at waiting messages
        (one pop per shard) runs here, as daphne's own sends do, so a message
        already there costs no thread hand-off; only a wait goes to the pool
        (``defer_to_pool(function, *args)`` returns its Deferred)."""
        from twisted.internet import defer

        deadline = time.monotonic() + timeout
        driver = Driver(self.plan.steps(True, timeout))
        try:
            wait = self.runner.drive(driver, stop_at_wait=True)
        except Exception:
            return defer.fail()
        if wait is None:
            return defer.succeed(driver.result)
        if not self.on_one_server():
            driver.close()  # several servers: the wait on all of them at once
            return defer_to_pool(self.run, True, max(0.0, deadline - time.monotonic()))
        return defer_to_pool(self._finish, driver, wait)

    def _finish(self, driver: Driver, wait: Step) -> Received:
        """In a pool thread: the wait a receive stopped at, then the rest of its plan."""
        driver.answer(*self.runner.run_guarded(wait))
        self.runner.drive(driver)
        return driver.result
