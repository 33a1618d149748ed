"""When a failed Redis command may be tried again: the layer's one retry policy.

The layer promises at most once: a message may be lost, never delivered
twice. redis-py by default repeats any command that hit a connection error,
including an EVALSHA of send.lua whose first run went through and whose
reply was lost, which would queue the message twice. So we install our own
policy into every client (see :func:`install`):

* A connection error while *establishing* a connection (TCP connect, TLS,
  AUTH/HELLO handshake) or during redis-py's optional health-check PING is
  retried once after a short pause: the command itself was not written yet.
  (A pooled connection closed by a Redis restart is noticed by redis-py
  before anything is written to it, and replaced through this same path.)
* A connection error after a command was written is retried once only for
  commands whose repetition cannot duplicate or lose a message: plain reads,
  idempotent writes, and the read-only / idempotent scripts.
* Sends, pops (pop.lua, BLPOP, take_body.lua) and pipelines are never
  retried once written: the caller gets ``LayerConnectionError``.
* Timeouts are never retried: the caller bounded the wait with
  ``socket_timeout`` / ``socket_connect_timeout`` and gets an error within it.
* Authentication errors are never retried: a second try cannot succeed.

Everything is decided from marks this module's connection mixin puts on the
exception as it passes, so the policy never depends on error message text.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Type

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import scripts

RETRY_PAUSE = 0.1  # seconds before the single retry; short, as the caller is waiting
MAX_RETRIES = 1

# Commands whose second run cannot deliver, queue or drop a message twice.
SAFE_COMMANDS: FrozenSet[str] = frozenset({
    "PING", "EXISTS", "GET", "MGET", "TTL", "PTTL", "LLEN", "LRANGE", "ZRANGE",
    "ZREM", "DEL", "UNLINK", "SCAN", "INFO", "SCRIPT",
})
# Scripts that only read, or write idempotently (group membership, pruning).
SAFE_SCRIPT_SHAS: FrozenSet[str] = frozenset(
    script.sha for script in (scripts.GROUP_ADD, scripts.GROUP_MEMBERS, scripts.CHANNEL_STATS)
)

_NOTHING_SENT = "_asgi_redis_nothing_sent"
_SETTLED = "_asgi_redis_settled"  # SafeRetry already decided about this error
_COMMAND = "_asgi_redis_command"
_NOT_A_COMMAND = object()  # pipelines: several commands, never repeated


def nothing_sent(error: BaseException) -> bool:
    """Whether ``error`` happened before the command reached the socket (safe to send elsewhere)."""
    return bool(getattr(error, _NOTHING_SENT, False))


def may_retry(error: BaseException) -> bool:
    """Whether ``error`` (raised by a client :func:`install` set up) is safe to retry."""
    if not isinstance(error, RedisConnectionError) or isinstance(error, RedisTimeoutError):
        return False
    if isinstance(error, (AuthenticationError, AuthorizationError)):
        return False
    if getattr(error, _NOTHING_SENT, False):
        return True
    return _is_safe_command(getattr(error, _COMMAND, _NOT_A_COMMAND))


def _is_safe_command(command: Any) -> bool:
    if not isinstance(command, tuple) or not command:
        return False
    name = _text(command[0]).upper()
    if name == "EVALSHA":
        return len(command) > 1 and _text(command[1]) in SAFE_SCRIPT_SHAS
    return name in SAFE_COMMANDS


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _mark(error: BaseException, attribute: str, value: Any) -> None:
    # the first mark wins: the innermost frame knows best what was sent
    if not hasattr(error, attribute):
        try:
            setattr(error, attribute, value)
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass


class SafeRetry(Retry):
    """redis-py's Retry with the decision of :func:`may_retry` on top.

    redis-py hands every connect, health check and command to
    ``call_with_retry``; the backoff and the failure callback (which drops
    the broken socket) behave as in redis-py.
    """

    def __init__(self, retries: int = MAX_RETRIES, pause: float = RETRY_PAUSE):
        super().__init__(NoBackoff(), retries)
        self.pause = pause

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any],
                        is_retryable: Optional[Callable[[Exception], bool]] = None,
                        with_failure_count: bool = False) -> Any:
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if (failures > self._retries or not may_retry(error)
                        or (is_retryable is not None and not is_retryable(error))):
                    _mark(error, _SETTLED, True)
                    raise
                time.sleep(self.pause)


class _TrackedConnection:
    """Mixin put in front of the pool's connection class; marks errors for may_retry."""

    def connect(self) -> None:
        # redis-py >= 8 runs the whole connect through SafeRetry; older versions
        # retry at most the socket connect, so the handshake is retried here
        failures = 0
        while True:
            try:
                return super().connect()  # type: ignore[misc]
            except (RedisConnectionError, RedisTimeoutError) as error:
                _mark(error, _NOTHING_SENT, True)
                failures += 1
                policy = getattr(self, "retry", None)
                if (not isinstance(policy, SafeRetry) or getattr(error, _SETTLED, False)
                        or failures > policy._retries or not may_retry(error)):
                    raise
                self.disconnect()  # type: ignore[attr-defined]
                time.sleep(policy.pause)

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # redis-py >= 6 connects through this from send_packed_command as well
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as error:
            _mark(error, _NOTHING_SENT, True)
            raise

    def check_health(self) -> None:
        # the PING before a command on an idle connection (health_check_interval);
        # it must not stand in for the command (or pipeline) written after it
        sent = getattr(self, "_asgi_redis_sent", _NOT_A_COMMAND)
        try:
            super().check_health()  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as error:
            _mark(error, _NOTHING_SENT, True)
            raise
        finally:
            self._asgi_redis_sent = sent

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().send_command(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as error:
            _mark(error, _COMMAND, args)
            raise
        # set after the send, so a health-check PING sent inside it cannot stand in
        self._asgi_redis_sent = args

    def pack_commands(self, commands: Any) -> Any:
        self._asgi_redis_sent = _NOT_A_COMMAND
        return super().pack_commands(commands)  # type: ignore[misc]

    def pack_command(self, *args: Any) -> Any:
        # written with send_packed_command, outside send_command: unknown, never repeated
        self._asgi_redis_sent = _NOT_A_COMMAND
        return super().pack_command(*args)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as error:
            _mark(error, _COMMAND, getattr(self, "_asgi_redis_sent", _NOT_A_COMMAND))
            raise


_tracked_classes: Dict[Type[Any], Type[Any]] = {}


def tracked_connection_class(connection_class: Type[Any]) -> Type[Any]:
    """``connection_class`` with the error marks :func:`may_retry` reads."""
    if issubclass(connection_class, _TrackedConnection):
        return connection_class
    if connection_class not in _tracked_classes:
        _tracked_classes[connection_class] = type(
            "Tracked" + connection_class.__name__, (_TrackedConnection, connection_class), {}
        )
    return _tracked_classes[connection_class]


def install(client: redis.Redis) -> redis.Redis:
    """Make ``client``'s future connections follow this policy (before first use).

    The retry itself comes in through the ``retry`` keyword (see
    :data:`CLIENT_DEFAULTS`); this swaps in the marking connection class.
    """
    pool = client.connection_pool
    pool.connection_class = tracked_connection_class(pool.connection_class)
    return client


def client_defaults() -> Dict[str, Any]:
    """Keyword arguments every layer client is built with (a user's own ``retry`` wins)."""
    # redis-py < 6 re-raises in its failure callback unless the error type is
    # listed in retry_on_error, which would leave SafeRetry no say
    return {"retry": SafeRetry(), "retry_on_error": [RedisConnectionError]}


__all__: Sequence[str] = [
    "SafeRetry", "may_retry", "nothing_sent", "install", "client_defaults", "tracked_connection_class",
]
