"""The one driver of a receive plan, and the runners that perform its steps.

:class:`Driver` advances a plan (sends each reply, throws each connection
error in, catches the result); the blocking path, the asyncio path and the
Twisted pool thread all use it, and differ only in how one step's Redis call
is made: :meth:`StepRunner.run` with a redis-py client,
:meth:`StepRunner.run_async` with a redis.asyncio one (and how a PAUSE rests:
``time.sleep`` or ``asyncio.sleep``). What a step means,
and the server quirks (whole-second BLPOP timeouts), are decided once here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional, Tuple

import redis

from .. import checkout
from ..errors import LayerConnectionError
from .plan import BLPOP, PAUSE, Step, Steps
from .port import NOTHING, LayerPort, Received


class Driver:
    """Feeds a plan the replies of its steps until it returns its result."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.result: Received = NOTHING
        self._reply: Any = None
        self._error: Optional[BaseException] = None

    def next_step(self) -> Optional[Step]:
        """The next call to make, or None once the plan is done (see :attr:`result`)."""
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self.steps.throw(error)
            return self.steps.send(self._reply)
        except StopIteration as done:
            self.result = done.value
            return None

    def answer(self, reply: Any, error: Optional[LayerConnectionError] = None) -> None:
        """The reply of the last step, or the connection error it failed with."""
        self._reply, self._error = reply, error

    def close(self) -> None:
        self.steps.close()


class StepRunner:
    """Performs steps on a layer's servers, guarded (errors name the server)."""

    def __init__(self, port: LayerPort) -> None:
        self.port = port

    # -- blocking ------------------------------------------------------------------

    def drive(self, driver: Driver, stop_at_wait: bool = False) -> Optional[Step]:
        """Run ``driver`` to its end with blocking calls; with ``stop_at_wait``,
        return the first BLPOP step unperformed instead (None when it ended first)."""
        while True:
            step = driver.next_step()
            if step is None or (stop_at_wait and step.kind == BLPOP):
                return step
            driver.answer(*self.run_guarded(step))

    def run_guarded(self, step: Step) -> Tuple[Any, Optional[LayerConnectionError]]:
        """``(reply, None)``, or ``(None, error)`` when the step's shard failed."""
        if step.kind == PAUSE:
            time.sleep(step.timeout)
            return None, None
        try:
            with self.port.guard(step.shards, step.index, "receive"):
                return self.run(step, step.shards.client(step.index)), None
        except LayerConnectionError as error:
            return None, error

    def run(self, step: Step, client: redis.Redis) -> Any:
        """One step with a blocking redis-py client."""
        if step.call is not None:
            return step.call.script(client, step.call.keys, step.call.args)
        if type(client) is redis.Redis:  # on a borrowed connection, as sends and pops
            return self._blpop(step, lambda timeout: checkout.execute(client, "BLPOP", *step.keys, timeout))
        return self._blpop(step, lambda timeout: client.blpop(step.keys, timeout=timeout))

    # -- asyncio -------------------------------------------------------------------

    async def drive_async(self, driver: Driver, client_for: Callable[[Any, int], Any]) -> Received:
        """Run ``driver`` to its end with redis.asyncio clients (``client_for(shards, index)``)."""
        while True:
            step = driver.next_step()
            if step is None:
                return driver.result
            reply, error = None, None
            if step.kind == PAUSE:
                await asyncio.sleep(step.timeout)
                driver.answer(None)
                continue
            try:
                with self.port.guard(step.shards, step.index, "receive"):
                    reply = await self.run_async(step, client_for(step.shards, step.index))
            except LayerConnectionError as failed:
                error = failed
            driver.answer(reply, error)

    async def run_async(self, step: Step, client: Any) -> Any:
        """One step with a redis.asyncio client."""
        if step.call is not None:
            return await step.call.script.call_async(client, step.call.keys, step.call.args)
        quirks = self.port.quirks
        try:
            return await client.blpop(step.keys, timeout=quirks.blpop_timeout(step.timeout))
        except redis.ResponseError as error:
            if not quirks.learn_from(error):
                raise
            return await client.blpop(step.keys, timeout=quirks.blpop_timeout(step.timeout))

    def _blpop(self, step: Step, blpop: Callable[[float], Any]) -> Any:
        quirks = self.port.quirks
        try:
            return blpop(quirks.blpop_timeout(step.timeout))
        except redis.ResponseError as error:
            if not quirks.learn_from(error):  # not the old-server refusal: a real error
                raise
            return blpop(quirks.blpop_timeout(step.timeout))
