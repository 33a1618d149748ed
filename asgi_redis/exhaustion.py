"""When connections run out: the process's descriptors, the server's clients, the pool's slots.

Three limits stop a layer from opening a connection although the servers are
up: the process's open-file limit (``EMFILE``, or ``ENFILE`` for the whole
system's file table), the server's ``maxclients`` and the pool's
``max_connections``. redis-py reports them as "unreachable" server errors or,
in places, as a bare ``OSError``; :func:`explain` says which limit was hit, so
the layer raises a :class:`LayerConnectionError` that names it.

Each of them lifts by itself (descriptors are closed, clients leave), and the
layer must work again without a restart. :func:`client_defaults` keeps
redis-py >= 8 from reading its package metadata (a file) each time it builds
a connection object: under ``EMFILE`` that read fails *after* the pool counted
the connection, and after ``max_connections`` such failures (100 by default)
the pool refused every call for good, even once descriptors were free.
"""

from __future__ import annotations

import errno
import functools
import resource
from typing import Any, Dict, Optional

import redis

_DESCRIPTOR_ERRNOS = (errno.EMFILE, errno.ENFILE)
_MAXCLIENTS_REPLY = "max number of clients reached"  # Redis's fixed refusal text
_MaxConnectionsError = getattr(redis.exceptions, "MaxConnectionsError", None)  # redis-py >= 6


def descriptor_errno(error: Optional[BaseException]) -> Optional[int]:
    """``EMFILE``/``ENFILE`` when ``error`` (or what it was raised from) is descriptor exhaustion."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DESCRIPTOR_ERRNOS:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def is_exhaustion(error: BaseException) -> bool:
    """Whether ``error`` is one of the limits this module explains (a bare OSError included)."""
    return explain(error) is not None


def explain(error: BaseException, where: str = "", client: Any = None) -> Optional[str]:
    """Why no connection to Redis ``where`` (through ``client``) could be had, in words; None for other errors."""
    code = descriptor_errno(error)
    if code == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"this process has run out of file descriptors (EMFILE: it reached its RLIMIT_NOFILE "
            f"soft limit of {_limit(soft)} open files; hard limit {_limit(hard)}), "
            f"so no connection to Redis {where} could be opened; the layer connects again by itself "
            "as soon as descriptors are free (close some, or raise the limit: ulimit -n)"
        )
    if code == errno.ENFILE:
        return (
            "the system's table of open files is full (ENFILE: fs.file-max), so no connection "
            f"to Redis {where} could be opened; the layer connects again by itself once files are closed"
        )
    if not isinstance(error, redis.ConnectionError):
        return None
    if _MAXCLIENTS_REPLY in str(error):
        return (
            f"Redis {where} refused the connection: it has reached its maxclients limit "
            f"({_MAXCLIENTS_REPLY}); the layer connects again by itself once the server accepts clients"
        )
    if (_MaxConnectionsError is not None and isinstance(error, _MaxConnectionsError)) or str(error) == (
        "Too many connections"
    ):
        max_connections = getattr(getattr(client, "connection_pool", None), "max_connections", None)
        size = f"{max_connections} " if max_connections else ""
        return (
            f"all {size}connections of the layer's pool for Redis {where} are in use "
            f"(max_connections={max_connections}; raise it in connection_kwargs if this many "
            "threads really use the layer at once)"
        )
    return None


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def client_defaults(connection_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Keywords for a layer client so that building a connection object opens no file.

    redis-py >= 8 builds a ``DriverInfo`` (reading its version from the
    installed package's metadata) in every connection's constructor unless one
    is given; we give one, built once. A user's own ``driver_info``,
    ``lib_name`` or ``lib_version`` wins.
    """
    if {"driver_info", "lib_name", "lib_version"} & set(connection_kwargs):
        return {}
    driver_info = _driver_info()
    return {} if driver_info is None else {"driver_info": driver_info}


@functools.cache
def _driver_info() -> Any:
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py < 8 reads its version once, at import
        return None
    return DriverInfo()


__all__ = ["client_defaults", "descriptor_errno", "explain", "is_exhaustion"]
