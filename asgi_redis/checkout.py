"""The hot path's connections: one command on a pooled connection, without
redis-py's per-call machinery.

A send or a pop is one command, and on loopback redis-py's pool checkout and
command wrapper (locks, an in-use set, deprecation and observability hooks,
an event per release) cost about a fifth of the round trip. :func:`take`
and :func:`give_back` borrow an idle connection straight from the pool's list
of idle ones and put it back there, so the pool stays the one owner of every
connection (its ``max_connections`` bound, ``disconnect`` and fork handling
are unchanged, and other callers share the same idle connections). What
redis-py's checkout checks is still checked:

* the pool's process (``_checkpid``: a forked child never uses its parent's sockets);
* that the connection is connected and still open (one ``poll(0)``) (a Redis restart or a
  server-side idle timeout is noticed before a command is written; it
  reconnects once, through the connection's retry policy) and has nothing
  waiting to be read (unless maintenance notifications are on: a push may
  wait then, and redis-py lets it too).

:func:`execute` runs the command through the connection's retry object, as
redis-py does, so the layer's at-most-once policy (``retry.py``) decides
alone what may be tried again.

Only plain ``redis.ConnectionPool`` s without client-side caching take this
path; any other pool (Sentinel, blocking, a user's own, a redis-py without
these internals) goes through ``get_connection`` / ``release`` unchanged.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any, Tuple

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _direct(pool: Any) -> bool:
    return type(pool) is redis.ConnectionPool and getattr(pool, "cache", None) is None \
        and hasattr(pool, "_available_connections") and hasattr(pool, "_checkpid")


def _data_check(pool: Any) -> bool:
    # as redis-py: with maintenance notifications on, a push may legitimately wait
    enabled = getattr(pool, "maint_notifications_enabled", None)
    return not (enabled is not None and enabled())


def take(pool: Any) -> Tuple[Any, bool]:
    """A connected connection of ``pool`` (with nothing waiting, where redis-py checks
    that), and whether it came from the idle list (give it back with :func:`give_back`)."""
    if not _direct(pool):
        return pool.get_connection(), False
    pool._checkpid()
    try:
        connection = pool._available_connections.pop()
    except IndexError:
        return pool.get_connection(), False  # the full checkout makes one, within the bound
    try:
        connection.connect()  # a no-op when connected
        if _quiet(connection):
            return connection, True
        try:
            # a socket the server closed raises here; data waiting is refused
            # unless a push may legitimately wait (as redis-py decides)
            if connection.can_read() and _data_check(pool):
                raise RedisConnectionError("Connection has data")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()
            connection.connect()
    except BaseException:
        pool._available_connections.append(connection)  # still the pool's; reconnects when used
        raise
    return connection, True


_POLL = hasattr(select, "poll")  # not on Windows: can_read alone there
_EVENTS = (select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP) if _POLL else 0


def _quiet(connection: Any) -> bool:
    """True when the connection's socket has nothing to read and is not closed: one
    poll(0) (can_read's non-blocking recv costs several system calls). Anything
    else, and TLS (buffered records), goes to redis-py's can_read."""
    sock = getattr(connection, "_sock", None)
    if not _POLL or type(sock) is not socket.socket:
        return False
    kept = getattr(connection, "_asgi_redis_poll", None)
    if kept is None or kept[0] is not sock:
        poller = select.poll()
        poller.register(sock, _EVENTS)
        kept = connection._asgi_redis_poll = (sock, poller)
    return not kept[1].poll(0)


def give_back(pool: Any, connection: Any, from_idle: bool) -> None:
    if not from_idle:
        pool.release(connection)
    elif pool.pid == os.getpid():  # a fork during the call: the child's pool starts afresh
        pool._available_connections.append(connection)


def execute(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command(*args)`` (no options) on a borrowed connection."""
    pool = client.connection_pool
    connection, from_idle = take(pool)
    try:
        return connection.retry.call_with_retry(
            lambda: _send_and_read(client, connection, args), lambda error: connection.disconnect()
        )
    except ResponseError:
        raise  # the whole reply was read: the connection is fine
    except BaseException:
        connection.disconnect()  # (KeyboardInterrupt, a timeout...) a reply may still be on its way
        raise
    finally:
        give_back(pool, connection, from_idle)


def _send_and_read(client: redis.Redis, connection: Any, args: Tuple[Any, ...]) -> Any:
    connection.send_command(*args)
    return client.parse_response(connection, args[0])


__all__ = ["execute", "give_back", "take"]
