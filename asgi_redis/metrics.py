"""In-process instruments: a layer counting in the process's prometheus_client registry.

Off by default. The layer's ``metrics`` setting turns them on: ``True``
counts in prometheus_client's default registry (what django-prometheus or
``prometheus_client.start_http_server`` already serve on ``/metrics``), a
``CollectorRegistry`` counts in that one. Needs the ``metrics`` extra
(``prometheus_client``).

Off costs next to nothing: a layer runs its class's own methods. Turning the
instruments on puts timed and counting wrappers on that one layer object
(instance attributes shadowing ``send``, ``receive``, ``send_group`` and two
internal hooks). Connection errors are counted where the layer's connection
guard raises them, through a hook it is handed: all a layer without metrics
does for them is read that one attribute (None) per Redis call.

On, each call costs one clock pair and a few additions under one lock: the
figures are plain numbers (:class:`Instruments`), turned into metric
families only when the registry is collected. prometheus_client's own
Counter and Histogram take a lock per update and cost about six times more,
which a send (0.1-0.2 ms on a local Redis) would notice. The price: these
metrics are per process; prometheus_client's multiprocess mode, which only
aggregates its own metric classes, does not see them.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import ChannelFull

# From a fast local Redis (~0.1 ms a send) to a blocking receive's full wait (5 s).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPERATIONS = ("send", "send_group", "receive", "receive_block")
SENT, RECEIVED, REFUSED, UNDECODABLE = range(4)
_COUNTERS = (
    ("asgi_redis_sent_messages", "Messages this process queued (send, and each member send_group reached)"),
    ("asgi_redis_received_messages", "Messages this process received (every receive flavour)"),
    ("asgi_redis_refused_messages",
     "Messages refused because the channel was full (ChannelFull from send; members send_group skipped)"),
    ("asgi_redis_undecodable_messages",
     "Messages dropped on receive because they could not be decoded (another encryption key, corrupt)"),
)
_ERRORS = ("asgi_redis_connection_errors",
           "Operations that failed because a Redis was unreachable, too slow or read-only")
_LATENCY = ("asgi_redis_operation_seconds",
            "Seconds a layer call took (receive_block: a receive(block=True), waiting included)")

_instruments_by_registry: weakref.WeakKeyDictionary[Any, Instruments] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class Instruments:
    """The figures of every layer counting into one registry, and the collector
    that shows them there (a registry refuses a metric name twice, so one each)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = [0, 0, 0, 0]  # SENT, RECEIVED, REFUSED, UNDECODABLE
        # per operation: one count per bucket of LATENCY_BUCKETS, one for +Inf, then the sum
        self.latency: Dict[str, List[float]] = {op: [0] * (len(LATENCY_BUCKETS) + 1) + [0.0] for op in OPERATIONS}
        self.connection_errors: Dict[Tuple[str, str], int] = {}

    def count_connection_error(self, shard: str, operation: str) -> None:
        with self.lock:
            key = (shard, operation)
            self.connection_errors[key] = self.connection_errors.get(key, 0) + 1

    # -- the prometheus_client collector interface ----------------------------------

    def describe(self) -> List[Any]:
        return list(self._families(describe=True))

    def collect(self) -> List[Any]:
        return list(self._families(describe=False))

    def _families(self, describe: bool) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with self.lock:  # one consistent copy; the layers wait only for the copying
            counts = list(self.counts)
            latency = {op: list(row) for op, row in self.latency.items()}
            errors = dict(self.connection_errors)
        for (name, documentation), value in zip(_COUNTERS, counts):
            yield CounterMetricFamily(name, documentation, value=None if describe else value)
        family = CounterMetricFamily(*_ERRORS, labels=["shard", "operation"])
        for (shard, operation), value in sorted(errors.items()) if not describe else ():
            family.add_metric([shard, operation], value)
        yield family
        family = HistogramMetricFamily(*_LATENCY, labels=["operation"])
        for operation, row in latency.items() if not describe else ():
            cumulative, buckets = 0, []
            for bound, count in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), row[:-1]):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([operation], buckets, row[-1])
        yield family


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
            instruments = _instruments_by_registry[registry] = Instruments()
            registry.register(instruments)
        return instruments


def instrument(layer: Any, instruments: Instruments) -> None:
    """Make ``layer`` (this object only) count in ``instruments``."""
    layer.send = _timed_send(layer.send, instruments, getattr(layer, "ChannelFull", ChannelFull))
    layer.receive = _timed_receive(layer.receive, instruments)
    layer.send_group = _timed(layer.send_group, instruments, "send_group")
    layer._send_to_members = _counting_members(layer._send_to_members, instruments)
    layer._decode = _counting_decode(layer._decode, instruments)
    layer._connection_error_hook = instruments.count_connection_error


# The wrappers bind everything they touch to locals: each call is a clock pair,
# one bisect and a few additions under the lock.


def _timed_send(send: Callable[..., None], instruments: Instruments, full: type) -> Callable[..., None]:
    clock, lock, counts, row = time.perf_counter, instruments.lock, instruments.counts, instruments.latency["send"]
    find, bounds, last = bisect.bisect_left, LATENCY_BUCKETS, len(LATENCY_BUCKETS) + 1

    def timed_send(channel: str, message: Any) -> None:
        outcome = None  # SENT, REFUSED, or None for another error
        started = clock()
        try:
            send(channel, message)
            outcome = SENT
        except full:
            outcome = REFUSED
            raise
        finally:
            elapsed = clock() - started
            with lock:
                row[find(bounds, elapsed)] += 1
                row[last] += elapsed
                if outcome is not None:
                    counts[outcome] += 1

    return timed_send


def _timed_receive(receive: Callable[..., Any], instruments: Instruments) -> Callable[..., Any]:
    clock, lock = time.perf_counter, instruments.lock
    quick, blocking = instruments.latency["receive"], instruments.latency["receive_block"]
    find, bounds, last = bisect.bisect_left, LATENCY_BUCKETS, len(LATENCY_BUCKETS) + 1

    def timed_receive(channels: Any, block: bool = False) -> Tuple[Optional[str], Any]:
        started = clock()
        try:
            return receive(channels, block)
        finally:
            elapsed = clock() - started
            row = blocking if block else quick
            with lock:
                row[find(bounds, elapsed)] += 1
                row[last] += elapsed

    return timed_receive


def _timed(method: Callable[..., Any], instruments: Instruments, operation: str) -> Callable[..., Any]:
    clock, lock, row = time.perf_counter, instruments.lock, instruments.latency[operation]
    find, bounds, last = bisect.bisect_left, LATENCY_BUCKETS, len(LATENCY_BUCKETS) + 1

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return method(*args, **kwargs)
        finally:
            elapsed = clock() - started
            with lock:
                row[find(bounds, elapsed)] += 1
                row[last] += elapsed

    return timed


def _counting_members(send_to_members: Callable[..., Optional[int]], instruments: Instruments) -> Callable[..., Any]:
    lock, counts = instruments.lock, instruments.counts

    def counting(members: List[str], message: Any, plain_body: bytes) -> Optional[int]:
        # the layer returns how many members were full (skipped)
        full = send_to_members(members, message, plain_body) or 0
        with lock:
            counts[SENT] += len(members) - full
            counts[REFUSED] += full
        return full

    return counting


def _counting_decode(decode: Callable[..., Any], instruments: Instruments) -> Callable[..., Any]:
    lock, counts = instruments.lock, instruments.counts

    def counting(queue_key: bytes, body: bytes, channel: Optional[str] = None) -> Any:
        # one call per message delivered: a fanned-out group entry is decoded per member
        found = decode(queue_key, body, channel)
        with lock:
            counts[UNDECODABLE if found is None else RECEIVED] += 1
        return found

    return counting
