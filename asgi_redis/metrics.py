"""In-process instruments: a layer counting in the process's prometheus_client registry.

Off by default. The layer's ``metrics`` setting turns them on: ``True``
counts in prometheus_client's default registry (what django-prometheus or a
Gunicorn exporter already serve on ``/metrics``), a ``CollectorRegistry``
counts in that one. Needs the ``metrics`` extra (``prometheus_client``).

Off costs next to nothing: a layer runs its class's own methods. Turning the
instruments on puts timed and counting wrappers on that one layer object
(instance attributes shadowing ``send``, ``receive``, ``send_group`` and two
internal hooks). Connection errors are counted where the layer's connection
guard raises them, through a hook it is handed: all a layer without metrics
does for them is read that one attribute (None) per Redis call.

The metric objects are prometheus_client's own (so its multiprocess mode
works unchanged) and exist once per registry: every layer of a process that
counts in one registry adds to the same series.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Tuple

from .errors import ChannelFull

# From a fast local Redis (~0.1 ms a send) to a blocking receive's full wait (5 s).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPERATIONS = ("send", "send_group", "receive", "receive_block")

_instruments_by_registry: weakref.WeakKeyDictionary[Any, Instruments] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class Instruments:
    """The metric objects of one registry (a registry refuses a metric name twice)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = registry
        self.sent = Counter(
            "asgi_redis_sent_messages", "Messages this process queued (send, and each member send_group reached)",
            registry=registry,
        )
        self.received = Counter(
            "asgi_redis_received_messages", "Messages this process received (every receive flavour)",
            registry=registry,
        )
        self.refused = Counter(
            "asgi_redis_refused_messages",
            "Messages refused because the channel was full (ChannelFull from send; members send_group skipped)",
            registry=registry,
        )
        self.undecodable = Counter(
            "asgi_redis_undecodable_messages",
            "Messages dropped on receive because they could not be decoded (another encryption key, corrupt)",
            registry=registry,
        )
        self.connection_errors = Counter(
            "asgi_redis_connection_errors",
            "Operations that failed because a Redis was unreachable, too slow or read-only",
            ["shard", "operation"], registry=registry,
        )
        self.latency = Histogram(
            "asgi_redis_operation_seconds",
            "Seconds a layer call took (receive_block: a receive(block=True), waiting included)",
            ["operation"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        # children resolved once: labels() costs a lock and a dict lookup per call
        self.seconds = {operation: self.latency.labels(operation) for operation in OPERATIONS}


def instruments_for(setting: Any) -> Optional[Instruments]:
    """The instruments a ``metrics`` setting asks for, or None when it leaves them off."""
    if setting is None or setting is False:
        return None
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            f"metrics={setting!r:.60} needs prometheus_client: pip install 'asgi_redis[metrics]'"
        ) from None
    if setting is True:
        registry = prometheus_client.REGISTRY
    elif isinstance(setting, prometheus_client.CollectorRegistry):
        registry = setting
    else:
        raise ValueError(
            f"metrics must be True, False or a prometheus_client CollectorRegistry, not {setting!r:.80}"
        )
    with _registry_lock:
        instruments = _instruments_by_registry.get(registry)
        if instruments is None:
            instruments = _instruments_by_registry[registry] = Instruments(registry)
        return instruments


def instrument(layer: Any, instruments: Instruments) -> None:
    """Make ``layer`` (this object only) count in ``instruments``."""
    layer.send = _timed_send(layer.send, instruments, getattr(layer, "ChannelFull", ChannelFull))
    layer.receive = _timed_receive(layer.receive, instruments)
    layer.send_group = _timed(layer.send_group, instruments.seconds["send_group"])
    layer._send_to_members = _counting_members(layer._send_to_members, instruments)
    layer._decode = _counting_decode(layer._decode, instruments)
    errors = instruments.connection_errors
    layer._connection_error_hook = lambda shard, operation: errors.labels(shard, operation).inc()


def _timed_send(send: Callable[..., None], instruments: Instruments, full: type) -> Callable[..., None]:
    clock, seconds = time.perf_counter, instruments.seconds["send"]
    sent, refused = instruments.sent, instruments.refused

    def timed_send(channel: str, message: Any) -> None:
        started = clock()
        try:
            send(channel, message)
        except full:
            refused.inc()
            raise
        finally:
            seconds.observe(clock() - started)
        sent.inc()

    return timed_send


def _timed_receive(receive: Callable[..., Any], instruments: Instruments) -> Callable[..., Any]:
    clock, quick, blocking = time.perf_counter, instruments.seconds["receive"], instruments.seconds["receive_block"]

    def timed_receive(channels: Any, block: bool = False) -> Tuple[Optional[str], Any]:
        started = clock()
        try:
            return receive(channels, block)
        finally:
            (blocking if block else quick).observe(clock() - started)

    return timed_receive


def _timed(method: Callable[..., Any], seconds: Any) -> Callable[..., Any]:
    clock = time.perf_counter

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return method(*args, **kwargs)
        finally:
            seconds.observe(clock() - started)

    return timed


def _counting_members(send_to_members: Callable[..., Optional[int]], instruments: Instruments) -> Callable[..., Any]:
    sent, refused = instruments.sent, instruments.refused

    def counting(members: List[str], message: Any, plain_body: bytes) -> Optional[int]:
        # the layer returns how many members were full (skipped), None when it cannot tell
        full = send_to_members(members, message, plain_body)
        sent.inc(len(members) - (full or 0))
        if full:
            refused.inc(full)
        return full

    return counting


def _counting_decode(decode: Callable[[bytes, bytes], Any], instruments: Instruments) -> Callable[..., Any]:
    received, undecodable = instruments.received, instruments.undecodable

    def counting(queue_key: bytes, body: bytes) -> Any:
        found = decode(queue_key, body)
        (undecodable if found is None else received).inc()
        return found

    return counting
