"""``asgi-redis exporter``: the layer's state as Prometheus metrics on ``/metrics``.

A scrape reads Redis the way ``inspect`` does (SCAN in batches with a key
budget, never KEYS) and turns what it finds into gauges: per channel the
pending messages and the age of the oldest one (a normal channel's per-shard
queues summed), per group the live members, the statistics counters, and per
shard whether it answers, its round trip, used memory and connected clients.

Scrapes are serialised by a lock and their figures are reused for
``min_interval`` seconds, so however many scrapers ask (an HA pair of
Prometheus servers, someone's browser) Redis sees at most one walk of the
keyspace at a time and at most one per interval. A shard that is down gives
``asgi_redis_shard_up 0`` and the other shards' figures, not a failed scrape.

Needs the ``metrics`` extra (``prometheus_client``); the rest of the command
line works without it.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis

from ..connections import ShardSet
from ..core import RedisChannelLayer
from ..errors import ChannelLayerError
from ..keyspace import glob_escape, scan_batches
from . import inspection
from .command_options import USAGE_ERROR, CommandError, layer_from_args, positive_int
from .embedded import cleanup_on_sigterm

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # the metrics extra is missing: the command says so when it is run
    Collector = object  # type: ignore[misc,assignment]
    HAVE_PROMETHEUS = False
else:
    HAVE_PROMETHEUS = True

logger = logging.getLogger("asgi_redis.exporter")

DEFAULT_LISTEN = "127.0.0.1:9808"
DEFAULT_KEY_BUDGET = 100_000  # keys SCANned per shard and scrape; ~200 SCAN replies of 500
DEFAULT_MAX_CHANNELS = 500  # channel and group series per scrape: bounds the cardinality
DEFAULT_MIN_INTERVAL = 5.0  # seconds a scrape's figures are served again instead of re-read
_COUNTERS = ("messages_count", "channel_full_count")


# -- what one scrape found --------------------------------------------------------


@dataclass
class ShardFigures:
    """What one shard answered in one scrape; ``up`` False and nothing else when it did not."""

    shard: str
    up: bool = False
    round_trip: Optional[float] = None  # seconds of one PING
    used_memory: Optional[int] = None
    connected_clients: Optional[int] = None
    scanned: int = 0
    complete: bool = True  # False when the key budget (or --max-channels) stopped the scan
    channels: Dict[str, Tuple[int, Optional[float]]] = field(default_factory=dict)  # pending, oldest age
    groups: Dict[str, int] = field(default_factory=dict)  # live members
    counters: Dict[str, List[int]] = field(default_factory=dict)  # messages_count, channel_full_count
    global_counters: List[int] = field(default_factory=lambda: [0, 0])


@dataclass
class Scrape:
    """A scrape's figures, merged over shards and folded."""

    shards: List[ShardFigures] = field(default_factory=list)
    channels: Dict[str, Tuple[int, Optional[float]]] = field(default_factory=dict)
    groups: Dict[str, int] = field(default_factory=dict)
    counters: Dict[str, List[int]] = field(default_factory=dict)
    global_counters: List[int] = field(default_factory=lambda: [0, 0])
    dropped_series: int = 0  # channels and groups left out by max_channels
    duration: float = 0.0
    finished: float = 0.0  # unix time


class ChannelFolding:
    """Maps a channel name to the label value it is reported under.

    Queue keys already hold ``!`` channels under their non-local part (every
    ``daphne.response.abc!xyz`` waits in ``daphne.response.abc!``), so a
    channel label names a process, not a connection. That is still one
    series per daphne process, renewed at each restart, and ``?`` reply
    channels are one series each. ``process_channels`` folds those further:
    ``daphne.response.abc!`` -> ``daphne.response.*!`` (the last dotted part
    before the ``!``), ``http.response?xYz`` -> ``http.response?*``.
    ``globs`` (fnmatch patterns, first match wins, checked first) report
    every matching channel under the pattern itself.
    """

    def __init__(self, globs: Sequence[str] = (), process_channels: bool = False):
        self.globs = list(globs)
        self.process_channels = process_channels

    def __call__(self, name: str) -> str:
        for glob in self.globs:
            if fnmatch.fnmatchcase(name, glob):
                return glob
        if self.process_channels:
            if "!" in name:
                head, dot, _ = name[: name.index("!")].rpartition(".")
                return f"{head}{dot}*!"
            if "?" in name:
                return name[: name.index("?") + 1] + "*"
        return name


# -- the collector ------------------------------------------------------------------


class LayerCollector(Collector):
    """A prometheus_client collector reading one layer's Redis at each collect().

    Register it in a ``CollectorRegistry`` (it has ``describe()``, so even the
    default registry does not scrape Redis at registration).
    """

    def __init__(self, layer: RedisChannelLayer, key_budget: int = DEFAULT_KEY_BUDGET,
                 max_channels: int = DEFAULT_MAX_CHANNELS, min_interval: float = DEFAULT_MIN_INTERVAL,
                 folding: Optional[Callable[[str], str]] = None) -> None:
        if not HAVE_PROMETHEUS:
            raise ImportError("the exporter needs prometheus_client: pip install 'asgi_redis[metrics]'")
        self.layer = layer
        self.key_budget = key_budget
        self.max_channels = max_channels
        self.min_interval = min_interval
        self.folding = folding or ChannelFolding()
        self._lock = threading.Lock()
        self._last: Optional[Scrape] = None
        self._last_at = 0.0  # time.monotonic() when _last was taken
        self._down: Set[Tuple[int, int]] = set()  # shards whose outage was logged

    def describe(self) -> List[Metric]:
        return _families(Scrape(), self.layer)

    def collect(self) -> List[Metric]:
        # one scrape at a time; a scraper that waited on the lock gets the figures just taken
        with self._lock:
            if self._last is None or time.monotonic() - self._last_at >= self.min_interval:
                self._last = self.scrape()
                self._last_at = time.monotonic()
            return _families(self._last, self.layer)

    def scrape(self) -> Scrape:
        """Read every shard now (no cache, no lock)."""
        started = time.perf_counter()
        scrape = Scrape(shards=[self._scrape_shard(shards, index) for shards, index in self.layer._sweep()])
        for figures in scrape.shards:
            for name, (pending, age) in figures.channels.items():
                _merge_channel(scrape.channels, self.folding(name), pending, age)
            for name, members in figures.groups.items():
                scrape.groups[name] = scrape.groups.get(name, 0) + members
            for name, values in figures.counters.items():
                _add(scrape.counters.setdefault(self.folding(name), [0, 0]), values)
            _add(scrape.global_counters, figures.global_counters)
        # a channel seen only through its counters (sent to within the hour) has nothing pending
        for name in scrape.counters:
            scrape.channels.setdefault(name, (0, None))
        scrape.channels, dropped_channels = _busiest(scrape.channels, self.max_channels, lambda v: v[0])
        scrape.groups, dropped_groups = _busiest(scrape.groups, self.max_channels, lambda v: v)
        scrape.counters, _ = _busiest(scrape.counters, self.max_channels, lambda v: v[0])
        scrape.dropped_series = dropped_channels + dropped_groups
        scrape.duration = time.perf_counter() - started
        scrape.finished = time.time()
        return scrape

    def _scrape_shard(self, shards: ShardSet, index: int) -> ShardFigures:
        try:
            client = shards.client(index)
            figures = ShardFigures(shard=shards.describe(index), up=True)
            started = time.perf_counter()
            client.ping()
            figures.round_trip = time.perf_counter() - started
            pipeline = client.pipeline(transaction=False)
            pipeline.info("memory")
            pipeline.info("clients")
            # an ACL user may be refused INFO: the shard still answers, those two gauges are left out
            memory, clients = pipeline.execute(raise_on_error=False)
            figures.used_memory = _info_field(memory, "used_memory")
            figures.connected_clients = _info_field(clients, "connected_clients")
            # the global counters, read directly (as the layer's layout keeps them): the key
            # budget must not hide them
            totals = self.layer._shard_global_statistics(shards, index)
            figures.global_counters = [totals.get(counter, 0) for counter in _COUNTERS]
            contents = inspection.inspect_shard(
                self.layer, figures.shard, client, self.max_channels, key_budget=self.key_budget
            )
            # a cluster keeps a normal channel in a bucket per slot range, and after a resharding
            # in more than one on the same master: each is a queue of its own, summed here
            for channel in contents.channels:
                _merge_channel(figures.channels, channel.name, channel.pending, channel.oldest_age)
            figures.groups = {g.name: g.members for g in contents.groups}
            figures.scanned = contents.scanned
            figures.complete = contents.complete
            self._read_counters(client, figures)
        except (redis.RedisError, ChannelLayerError) as error:
            if (id(shards), index) not in self._down:  # once per outage, not at every scrape
                self._down.add((id(shards), index))
                logger.warning("shard %s is left out of the scrapes: %s", shards.describe(index), error)
            return ShardFigures(shard=shards.describe(index), up=False)
        if (id(shards), index) in self._down:
            self._down.discard((id(shards), index))
            logger.warning("shard %s answers again", figures.shard)
        return figures

    def _read_counters(self, client: redis.Redis, figures: ShardFigures) -> None:
        """Per-channel statistics counters on one shard, one MGET per SCAN batch,
        within what is left of the key budget."""
        budget = self.key_budget - figures.scanned
        if budget <= 0:
            figures.complete = False
            return
        scanned = 0
        pattern = glob_escape(self.layer.stats_prefix) + "*"
        for keys in scan_batches(client, pattern, batch=inspection.SCAN_BATCH, key_budget=budget):
            scanned += len(keys)
            strings, hashes = [], []  # classic: a key per counter; compact: a hash of both per queue
            for key in keys:
                parsed = inspection.statistics_key_channel(self.layer, key)
                if parsed is not None:
                    (hashes if parsed[1] is None else strings).append((key, parsed))
            if strings:
                values = client.mget([key for key, _ in strings])
                for (_, (name, counter)), value in zip(strings, values):
                    if value is not None:  # expired between SCAN and MGET
                        figures.counters.setdefault(name, [0, 0])[_COUNTERS.index(counter)] += int(value)
            if hashes:
                pipeline = client.pipeline(transaction=False)
                for key, _ in hashes:
                    pipeline.hmget(key, *_COUNTERS)
                for (_, (name, _)), values in zip(hashes, pipeline.execute()):
                    _add(figures.counters.setdefault(name, [0, 0]), [int(value or 0) for value in values])
            if scanned >= budget:
                figures.complete = False
                break
        figures.scanned += scanned


def _info_field(reply: Any, name: str) -> Optional[int]:
    if isinstance(reply, redis.ResponseError) or not isinstance(reply, dict) or name not in reply:
        return None
    return int(reply[name])


def _merge_channel(channels: Dict[str, Tuple[int, Optional[float]]], name: str,
                   pending: int, age: Optional[float]) -> None:
    known_pending, known_age = channels.get(name, (0, None))
    ages = [value for value in (known_age, age) if value is not None]
    channels[name] = (known_pending + pending, max(ages) if ages else None)


def _add(total: List[int], values: Sequence[int]) -> None:
    for position, value in enumerate(values):
        total[position] += value


def _busiest(series: Dict[str, Any], limit: int, weight: Callable[[Any], int]) -> Tuple[Dict[str, Any], int]:
    """At most ``limit`` entries, the heaviest first (ties by name), and how many were left out."""
    if len(series) <= limit:
        return series, 0
    kept = sorted(series.items(), key=lambda item: (-weight(item[1]), item[0]))[:limit]
    return dict(kept), len(series) - limit


def _families(scrape: Scrape, layer: RedisChannelLayer) -> List[Metric]:
    """The metric families of a scrape (an empty Scrape gives the bare families for describe())."""
    def gauge(name: str, documentation: str, labels: Sequence[str] = (),
              samples: Iterable[Tuple[Sequence[str], Optional[float]]] = ()) -> Metric:
        family = GaugeMetricFamily(name, documentation, labels=list(labels))
        for label_values, value in samples:
            if value is not None:
                family.add_metric(list(label_values), value)
        return family

    up = [s for s in scrape.shards if s.up]
    seen = bool(scrape.shards)
    return [
        gauge("asgi_redis_channel_pending_messages",
              "Messages waiting on a channel (a normal channel's queues summed over shards)",
              ["channel"], (([name], pending) for name, (pending, _) in sorted(scrape.channels.items()))),
        gauge("asgi_redis_channel_oldest_message_age_seconds",
              "Seconds since the oldest waiting message of a channel was sent",
              ["channel"], (([name], age) for name, (_, age) in sorted(scrape.channels.items()))),
        gauge("asgi_redis_group_members", "Live members of a group (joined or refreshed within group_expiry)",
              ["group"], (([name], members) for name, members in sorted(scrape.groups.items()))),
        gauge("asgi_redis_messages_count",
              "Messages sent, over every channel, since the global counter was created; it expires "
              "(back to 0) 86400 s after the last message. A gauge, not a total",
              samples=[((), scrape.global_counters[0] if seen else None)]),
        gauge("asgi_redis_channel_full_count",
              "Messages refused because their channel was full, over every channel, counted like "
              "asgi_redis_messages_count",
              samples=[((), scrape.global_counters[1] if seen else None)]),
        gauge("asgi_redis_channel_messages_count",
              "Messages sent to a channel since its counter was created; it expires (back to 0) "
              "3600 s after the channel's last message. A gauge, not a total",
              ["channel"], (([name], values[0]) for name, values in sorted(scrape.counters.items()))),
        gauge("asgi_redis_channel_channel_full_count",
              "Messages refused because the channel was full, counted like asgi_redis_channel_messages_count",
              ["channel"], (([name], values[1]) for name, values in sorted(scrape.counters.items()))),
        gauge("asgi_redis_shard_up", "1 when the shard answered this scrape, 0 when it did not",
              ["shard"], (([s.shard], int(s.up)) for s in scrape.shards)),
        gauge("asgi_redis_shard_round_trip_seconds", "Seconds of one PING to the shard",
              ["shard"], (([s.shard], s.round_trip) for s in up)),
        gauge("asgi_redis_shard_used_memory_bytes", "used_memory of the shard's INFO",
              ["shard"], (([s.shard], s.used_memory) for s in up)),
        gauge("asgi_redis_shard_connected_clients", "connected_clients of the shard's INFO",
              ["shard"], (([s.shard], s.connected_clients) for s in up)),
        gauge("asgi_redis_scrape_keys_scanned", "Keys the scrape walked on the shard (SCAN)",
              ["shard"], (([s.shard], s.scanned) for s in up)),
        gauge("asgi_redis_scrape_truncated",
              "1 when the key budget (or the series limit) stopped the shard's scan: figures are partial",
              ["shard"], (([s.shard], int(not s.complete)) for s in up)),
        gauge("asgi_redis_scrape_dropped_series",
              "Channels and groups left out because the series limit (--max-channels) was reached",
              samples=[((), scrape.dropped_series if seen else None)]),
        gauge("asgi_redis_scrape_duration_seconds", "Seconds the scrape that produced these figures took",
              samples=[((), scrape.duration if seen else None)]),
        gauge("asgi_redis_scrape_timestamp_seconds",
              "Unix time of the scrape that produced these figures (older than now when served from cache)",
              samples=[((), scrape.finished if seen else None)]),
        gauge("asgi_redis_expiry_seconds", "The layer's expiry: a message older than this is dropped",
              samples=[((), layer.expiry)]),
    ]


# -- the HTTP side ----------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper never keeps the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per scrape on stderr is noise; failures are logged by the collector


class MetricsServer:
    """``/metrics`` of a registry holding ``collector``, over HTTP on ``host:port``
    (port 0: any free port; see :attr:`address`)."""

    def __init__(self, collector: LayerCollector, host: str = "127.0.0.1", port: int = 9808) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        metrics = make_wsgi_app(self.registry)

        def app(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            path = environ.get("PATH_INFO") or "/"
            if path.rstrip("/") == "/metrics":
                return metrics(environ, start_response)
            status = "200 OK" if path == "/" else "404 Not Found"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"asgi_redis exporter: the metrics are at /metrics\n"]

        server_class = _ThreadingServer
        if ":" in host:
            server_class = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
        self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.5)

    def start(self) -> MetricsServer:
        """Serve from a daemon thread; :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="asgi-redis-exporter", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()


# -- the command ------------------------------------------------------------------


def parse_listen(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9808`` for IPv6; ``:9808`` for every IPv4 interface)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=parse_listen, default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help="where to serve /metrics (default %(default)s)")
    parser.add_argument("--key-budget", type=positive_int, default=DEFAULT_KEY_BUDGET, metavar="KEYS",
                        help="keys SCANned per shard and scrape at most (default %(default)s); "
                             "asgi_redis_scrape_truncated says when it cut a scrape short")
    parser.add_argument("--max-channels", type=positive_int, default=DEFAULT_MAX_CHANNELS, metavar="N",
                        help="at most N channel and N group series, the busiest (default %(default)s)")
    parser.add_argument("--min-interval", type=float, default=DEFAULT_MIN_INTERVAL, metavar="SECONDS",
                        help="serve a scrape's figures again for this long instead of reading Redis "
                             "(default %(default)s; 0: read at every request, still one at a time)")
    parser.add_argument("--fold-process-channels", action="store_true",
                        help="one series for every 'foo.X!' and every 'foo?X' channel: 'foo.*!', 'foo?*'")
    parser.add_argument("--fold", action="append", default=[], metavar="GLOB",
                        help="report the channels matching GLOB as one series labelled GLOB (repeatable)")
    parser.add_argument("--expiry", type=positive_int, metavar="SECONDS",
                        help="the layer's expiry, for message ages (default: the settings' or 60)")
    parser.add_argument("--group-expiry", type=positive_int, metavar="SECONDS",
                        help="the layer's group_expiry, for live members (default: the settings' or 86400)")


def run(args: argparse.Namespace) -> int:
    if not HAVE_PROMETHEUS:
        raise CommandError("the exporter needs prometheus_client: pip install 'asgi_redis[metrics]'", USAGE_ERROR)
    if not 0 <= args.min_interval <= 3600:
        raise CommandError(f"--min-interval must be from 0 to 3600 seconds, not {args.min_interval}", USAGE_ERROR)
    overrides = {name: getattr(args, name) for name in ("expiry", "group_expiry") if getattr(args, name)}
    layer = layer_from_args(args, overrides)
    collector = LayerCollector(
        layer, key_budget=args.key_budget, max_channels=args.max_channels, min_interval=args.min_interval,
        folding=ChannelFolding(args.fold, args.fold_process_channels),
    )
    host, port = args.listen
    try:
        server = MetricsServer(collector, host, port)
    except OSError as error:
        layer.close()
        raise CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    shards = [shards.describe(index) for shards, index in layer._sweep()]
    print(f"asgi-redis exporter: serving {server.url} for {', '.join(shards)} "
          f"(prefix {layer.prefix!r})", flush=True)
    cleanup_on_sigterm()  # SIGTERM unwinds through the finally below
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        layer.close()
    return 0
