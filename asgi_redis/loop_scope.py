"""Resources that belong to one asyncio event loop, closed when that loop closes.

A redis.asyncio connection works only on the loop that opened it, so the
asyncio extension keeps one set of clients per loop. A process that runs a
loop per task or per thread (``asyncio.run`` in worker threads) would keep
every finished loop's connections, and their descriptors, for the life of the
layer: the clients refer to their loop, so a weak mapping keyed by the loop
never lets go of it. :func:`close_with_loop` runs a coroutine on the loop
just before ``loop.close()`` (``asyncio.run`` calls it last), while the loop
can still run it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, List

logger = logging.getLogger("asgi_redis")

_CLOSERS = "_asgi_redis_closers"


def close_with_loop(loop: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[Any]]) -> bool:
    """Have ``close()`` awaited on ``loop`` when it is closed; False if this loop cannot be hooked."""
    closers = getattr(loop.close, _CLOSERS, None)
    if closers is None:
        closers = []
        original = loop.close

        def closing() -> None:
            pending, closers[:] = list(closers), []
            if pending and not loop.is_closed() and not loop.is_running():
                for run in pending:
                    try:
                        loop.run_until_complete(run())
                    except Exception as error:  # closing must go on whatever one closer hits
                        logger.warning("closing asgi_redis connections with their loop failed: %s", error)
            original()

        setattr(closing, _CLOSERS, closers)
        try:
            loop.close = closing  # type: ignore[method-assign]
        except (AttributeError, TypeError):  # a loop type that takes no attributes (uvloop)
            return False
    closers.append(close)
    return True


def pending_closers(loop: asyncio.AbstractEventLoop) -> List[Callable[[], Awaitable[Any]]]:
    """The closers registered on ``loop`` and not run yet (for tests and introspection)."""
    return list(getattr(loop.close, _CLOSERS, []))
