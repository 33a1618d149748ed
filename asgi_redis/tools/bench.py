"""The benchmark: the layer beside the raw redis-py limit, measured in one run.

``python -m asgi_redis.bench`` or ``asgi-redis bench``. Every figure of ours
is printed beside what bare redis-py does over the same connection in the
same run, with the ratio:

- send/s                  vs  EVALSHA of a trivial script (one round trip each)
- send + receive pairs/s  vs  RPUSH + LPOP pairs (two round trips each)
- blocking receive p50/99 vs  BLPOP woken by an RPUSH from another client
- send_group, M members   vs  ZRANGE, then SET/RPUSH/EXPIRE per member in one pipeline
- the same with encryption, over two shards, and on the compact layout
- send_group to 1,000 members of 1 and of 4 processes, on both layouts
- Redis time per delivered message (INFO commandstats), compact vs classic,
  and refused vs accepted sends of a full channel at capacity 100/500/2,000

The machine's speed drifts, so ours and raw run in alternating short rounds
and each ratio is the median of the per-round ratios. Without --url or
--settings it starts its own server(s) (asgi_redis.tools.embedded); it writes under its own prefix
and removes its keys at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar
from urllib.parse import urlparse, urlunparse

import redis

from .. import __version__, checkout
from ..core import RedisChannelLayer
from .command_options import (
    CommandError,
    OneLineErrorParser,
    add_layer_options,
    build_layer,
    has_location,
    layer_config,
    run_command,
)
from .embedded import EmbeddedRedis, cleanup_on_sigterm, describe_server
from .output import format_table, percentile

MESSAGE = {  # about the size of a Channels 1.x http.request
    "reply_channel": "http.response!Jx8aZrCvTqWp",
    "http_version": "1.1", "method": "GET", "path": "/chat/room/", "query_string": b"",
    "headers": [[b"host", b"example.com"], [b"accept", b"text/html"]], "body": b"",
}
TRIVIAL_SCRIPT = b"return 1"
SEND_TARGET = 0.8
GROUP_TARGET_SECONDS = 0.030
METRICS_COST_TARGET = 0.03  # in-process metrics may slow an operation by this fraction at most
T = TypeVar("T")


@dataclass
class Row:
    name: str
    unit: str  # "/s" (higher is better) or "ms" (lower is better)
    ours: float
    raw: float
    raw_label: str
    ratio: float  # our speed relative to raw: 1.0 is as fast, 0.5 half as fast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a few operations only (a smoke test, no figures)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per measure (default 15)")
    parser.add_argument("--ops", type=int, help="operations per round (default 200)")
    parser.add_argument("--members", default="10,100,1000,10000",
                        help="group sizes for send_group, comma-separated (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--metrics-cost", action="store_true",
                        help="instead: the layer with in-process metrics on against the same layer with "
                             "them off, in alternating rounds (needs prometheus_client)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw ours beside the raw limit (needs matplotlib)")
    parser.add_argument("--channels-redis", metavar="PYTHON",
                        help="an interpreter with channels_redis 4 installed: its group_send to the "
                             "same members, on the same Redis, beside the compact layout's send_group")


class Bench:
    def __init__(self, hosts: List[Any], two_shards: List[Any], config: Dict[str, Any],
                 args: argparse.Namespace):
        self.rounds, self.ops, self.samples = measure_sizes(args)
        self.members = _parse_members(args.members, args.quick)
        self.process_members = 100 if args.quick else 1000
        self.channels_redis: Optional[str] = getattr(args, "channels_redis", None)
        self.tag = secrets.token_hex(3)
        base = {**config, "prefix": f"asgi-bench-{self.tag}:", "stats_prefix": f"asgi-bench-meta-{self.tag}:",
                "capacity": 10 ** 9, "expiry": 60}
        self.layers: List[RedisChannelLayer] = []
        self.configs: Dict[int, Dict[str, Any]] = {}
        self.plain = self._layer(base, hosts)
        self.encrypted = self._layer({**base, "symmetric_encryption_keys": ["bench key"]}, hosts)
        self.sharded = self._layer(base, two_shards)
        self.compact = self._layer({**base, "layout": "compact"}, hosts)
        self.base_config = base
        self.raw = self.plain.shards.client(0)  # the same pool: same host, same socket options
        self.raw_second = self.sharded.shards.client(1)
        self.trivial_sha = self.raw.script_load(TRIVIAL_SCRIPT)
        self.rows: List[Row] = []

    def _layer(self, config: Dict[str, Any], hosts: List[Any]) -> RedisChannelLayer:
        layer = build_layer(RedisChannelLayer, {**config, "hosts": hosts})
        layer.flush()
        self.layers.append(layer)
        self.configs[id(layer)] = {**config, "hosts": hosts}
        return layer

    def close(self) -> None:
        close_layers(self.layers)

    # -- the measures --------------------------------------------------------------

    def run(self, report: Callable[[Row], None]) -> List[Row]:
        for prefix, layer in (("", self.plain), ("encrypted ", self.encrypted), ("2 shards: ", self.sharded),
                              ("compact: ", self.compact)):
            # the raw limit talks to the same servers as the layer, in turn when there are two
            clients = [layer.shards.client(index) for index in range(len(layer.shards))]
            for client in clients:
                client.script_load(TRIVIAL_SCRIPT)
            report(self.rate(f"{prefix}send", layer, lambda i, layer=layer: layer.send("bench.send", MESSAGE),
                             "EVALSHA of 'return 1'",
                             lambda i, c=clients: c[i % len(c)].evalsha(self.trivial_sha, 0)))
            if layer is self.compact:
                # the raw limit above is redis-py's client call (its pool checkout and command
                # wrapper); the layer borrows connections more cheaply (asgi_redis/checkout.py):
                # this row puts it beside a bare EVALSHA on that same path
                report(self.rate(f"{prefix}send vs the layer's connection path", layer,
                                 lambda i, layer=layer: layer.send("bench.send", MESSAGE),
                                 "EVALSHA of 'return 1', borrowed connection",
                                 lambda i, c=clients: checkout.execute(c[i % len(c)], "EVALSHA",
                                                                       self.trivial_sha, 0)))
            report(self.rate(f"{prefix}send + receive pair", layer,
                             lambda i, layer=layer: self._pair(layer), "RPUSH + LPOP",
                             lambda i, c=clients: self._raw_pair(c[i % len(c)])))
            if layer is not self.encrypted:
                for row in self.blocking_latency(f"{prefix}blocking receive", layer):
                    report(row)
            sizes = self.members if layer in (self.plain, self.compact) else [m for m in self.members if m == 1000][:1]
            for members in sizes:
                report(self.group(f"{prefix}send_group {members:,} members", layer, members))
        for prefix, layer in (("", self.plain), ("compact: ", self.compact)):
            for processes in (1, 4):
                # daphne: every socket of one process is a foo!* channel of its one queue
                row = self.group(f"{prefix}send_group {self.process_members:,} members of {processes} "
                                 f"process{'es' if processes > 1 else ''}", layer, self.process_members, processes)
                report(row)
                if layer is self.compact and self.channels_redis:
                    report(self.channels_redis_group(row, processes))
        for row in self.redis_time():
            report(row)
        return self.rows

    def metrics_cost(self, report: Callable[[Row], None]) -> List[Row]:
        """The same operations with the in-process instruments on ("ours") and off ("raw")."""
        from prometheus_client import CollectorRegistry

        plain = self.configs[id(self.plain)]
        counted = self._layer({**plain, "metrics": CollectorRegistry()}, plain["hosts"])
        off = "the same layer, metrics off"
        report(self.rate("send, metrics on", counted, lambda i: counted.send("bench.send", MESSAGE),
                         off, lambda i: self.plain.send("bench.send", MESSAGE)))
        report(self.rate("send + receive pair, metrics on", counted, lambda i: self._pair(counted),
                         off, lambda i: self._pair(self.plain)))
        report(self.group("send_group 100 members, metrics on", counted, 100, against=self.plain))
        return self.rows

    def rate(self, name: str, layer: RedisChannelLayer, ours: Callable[[int], Any],
             raw_label: str, raw: Callable[[int], Any]) -> Row:
        ours_rates, raw_rates = alternating(
            self.rounds, lambda which: timed_rate(self.ops, ours if which == "ours" else raw),
            after_round=layer.flush,  # not timed: keeps queues short and memory flat
        )
        return self._row(name, "/s", ours_rates, raw_rates, raw_label, higher_is_better=True)

    def _pair(self, layer: RedisChannelLayer) -> None:
        layer.send("bench.pair", MESSAGE)
        channel, _ = layer.receive(["bench.pair"])
        if channel is None:
            raise CommandError("benchmark lost a message: receive found nothing right after send")

    def _raw_pair(self, client: redis.Redis) -> None:
        client.rpush("asgi-bench-raw", b"x" * 200)
        client.lpop("asgi-bench-raw")

    def blocking_latency(self, name: str, layer: RedisChannelLayer) -> List[Row]:
        """Time from the start of a send until a receiver blocked in receive() returns it."""
        # Another process sends, in real life: a second layer object, so the sender's turn
        # over the shards is not in step with the receiver's (one object would keep them so).
        sender = build_layer(RedisChannelLayer, self.configs[id(layer)])
        chooser = random.Random(len(self.rows))

        def send() -> None:
            # Many senders make the shard a normal channel's message lands on random as
            # seen by a receiver; two lone objects would stay in step. Skip a turn at random.
            if chooser.random() < 0.5:
                next(sender._send_turn)
            sender.send("bench.block", MESSAGE)

        ours_probe = _BlockingProbe(lambda: layer.receive(["bench.block"], block=True)[1], send)
        raw_receiver = redis.Redis(connection_pool=self.raw.connection_pool)
        raw_probe = _BlockingProbe(lambda: raw_receiver.blpop(["asgi-bench-raw-block"], timeout=5),
                                   lambda: self.raw.rpush("asgi-bench-raw-block", b"x" * 200))
        try:
            ours_times, raw_times = blocking_times(ours_probe, raw_probe, self.rounds, self.samples)
        finally:
            ours_probe.close()
            raw_probe.close()
            sender.close()
        return [self._add(row) for row in latency_rows(name, ours_times, raw_times)]

    def group(self, name: str, layer: RedisChannelLayer, members: int, processes: int = 0,
              against: Optional[RedisChannelLayer] = None) -> Row:
        """send_group to ``members`` against the bare commands, or against the send_group of
        layer ``against`` (on the same prefix, so the same group)."""
        group = f"bench.group{members}"
        # daphne's reply channels are process-specific (``!``): by default each member
        # is in a process of its own; with ``processes``, members share that many queues
        names = [f"daphne.response.{self.tag}{i % processes if processes else i}!{i:06d}" for i in range(members)]
        repeats = max(1, min(self.ops // 20, 2000 // members))
        body = layer.serializer.encode(MESSAGE)

        def one(which: str) -> float:
            layer.flush()
            self._fill_group(layer, group, names)
            started = time.perf_counter()
            for _ in range(repeats):
                if which == "ours":
                    layer.send_group(group, MESSAGE)
                elif against is not None:
                    against.send_group(group, MESSAGE)
                else:
                    self._raw_group(layer, group, body)
            return (time.perf_counter() - started) / repeats

        ours_times, raw_times = alternating(self.rounds if members < 10000 else max(2, self.rounds // 2), one)
        layer.flush()
        raw_label = "the same layer, metrics off" if against is not None \
            else "ZRANGE + one pipeline of SET/RPUSH/EXPIRE per member"
        return self._row(name, "ms", [t * 1000 for t in ours_times], [t * 1000 for t in raw_times],
                         raw_label, higher_is_better=False)

    def channels_redis_group(self, ours: Row, processes: int) -> Row:
        """channels_redis's group_send to as many members in as many processes, same Redis."""
        url = self.configs[id(self.plain)]["hosts"][0]
        if not isinstance(url, str):
            url = f"redis://{url[0]}:{url[1]}"
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "channels_redis_group_send.py")
        done = subprocess.run(
            [self.channels_redis, script, url, str(self.process_members), str(processes), str(max(3, self.rounds))],
            capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise CommandError(f"channels_redis group_send failed: {done.stderr.strip().splitlines()[-1:]}")
        theirs = json.loads(done.stdout)["ms"]
        return self._add(Row(f"{ours.name} vs channels_redis", "ms", ours.ours, theirs,
                             "channels_redis 4 group_send, same members", theirs / ours.ours))

    def redis_time(self) -> List[Row]:
        """Redis time per delivered message and per refused send, from INFO commandstats
        (deltas, so other clients' commands on a shared server count too; run it alone)."""
        client = self.raw
        rounds = max(1, self.rounds // 3)
        count = max(20, self.ops * 5)  # a figure per round steadier than the rates need
        per_message: Dict[str, List[float]] = {"classic": [], "compact": []}
        scripts_only: Dict[str, List[float]] = {"classic": [], "compact": []}  # the EVALSHA rows alone
        cpu: Dict[str, List[float]] = {"classic": [], "compact": []}
        for number in range(rounds):
            for name in ("classic", "compact") if number % 2 == 0 else ("compact", "classic"):
                layer = self.plain if name == "classic" else self.compact
                cpu_before = _cpu_seconds(client)
                before = _command_usec(client)
                for _ in range(count):
                    layer.send("bench.time!a", MESSAGE)
                    if layer.receive(["bench.time!"])[0] is None:
                        raise CommandError("benchmark lost a message: receive found nothing right after send")
                # the compact layout pops with a plain LPOP; classic's LPOP runs inside its script
                top_level = ("evalsha", "blpop", "lpop", "lmpop") if name == "compact" else ("evalsha", "blpop")
                after = _command_usec(client)
                per_message[name].append(_usec_between(before, after, top_level) / count)
                scripts_only[name].append(_usec_between(before, after, ("evalsha",)) / count)
                # everything the server did meanwhile (reading, replying, the two INFO calls)
                cpu[name].append((_cpu_seconds(client) - cpu_before) * 1e6 / count)
                layer.flush()
        rows = []
        for label, figures in (("Redis time per delivered message (send + receive)", per_message),
                               ("Redis script time per delivered message (EVALSHA rows)", scripts_only),
                               ("Redis CPU per delivered message (INFO cpu)", cpu)):
            ours, theirs = statistics.median(figures["compact"]), statistics.median(figures["classic"])
            rows.append(self._add(Row(label, "us", ours, theirs, "classic layout (1.4.3's)",
                                      theirs / ours if ours else float("inf"))))
        for name in ("classic", "compact"):
            for capacity in (100, 500, 2000):
                rows.append(self._refused_send(name, capacity, client))
        return rows

    def _refused_send(self, name: str, capacity: int, client: redis.Redis) -> Row:
        layer = build_layer(RedisChannelLayer, {**self.configs[id(self.plain)], "layout": name,
                                                "capacity": capacity})
        try:
            layer.flush()
            before = _command_usec(client)
            for _ in range(capacity):
                layer.send("bench.full", MESSAGE)
            accepted = _usec_since(client, before, ("evalsha",)) / capacity
            refusals = max(20, self.ops)
            before = _command_usec(client)
            for _ in range(refusals):
                try:
                    layer.send("bench.full", MESSAGE)
                except layer.ChannelFull:
                    pass
            refused = _usec_since(client, before, ("evalsha",)) / refusals
        finally:
            layer.flush()
            layer.close()
        return self._add(Row(f"{name} layout: refused send, capacity {capacity:,}", "us", refused, accepted,
                             "accepted send", accepted / refused))

    def _fill_group(self, layer: RedisChannelLayer, group: str, names: List[str]) -> None:
        # one ZADD instead of a group_add per member: setup time is not what we measure
        client = layer.shards.client(layer.shard_for(group))
        now = time.time()
        for start in range(0, len(names), 5000):
            client.zadd(layer._group_key(group), {member: now for member in names[start:start + 5000]})

    def _raw_group(self, layer: RedisChannelLayer, group: str, body: bytes) -> None:
        """The bare commands of a group send, pipelined per shard, without a script."""
        group_client = layer.shards.client(layer.shard_for(group))
        members = group_client.zrange(layer._group_key(group), 0, -1)
        clients = [layer.shards.client(i) for i in range(len(layer.shards))]
        pipelines = [client.pipeline(transaction=False) for client in clients]
        for i, member in enumerate(members):
            pipeline = pipelines[i % len(pipelines)]
            body_key = f"asgi-bench-raw:{i}"
            pipeline.set(body_key, body, ex=60)
            pipeline.rpush(b"asgi-bench-raw:" + member, body_key)
            pipeline.expire(b"asgi-bench-raw:" + member, 61)
        for pipeline in pipelines:
            pipeline.execute()

    def _row(self, name: str, unit: str, ours: List[float], raw: List[float], raw_label: str,
             higher_is_better: bool) -> Row:
        return self._add(median_row(name, unit, ours, raw, raw_label, higher_is_better))

    def _add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def cleanup_raw_keys(self) -> None:
        for client in {id(c): c for c in (self.raw, self.raw_second)}.values():
            keys = list(client.scan_iter(match="asgi-bench-raw*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])


class _BlockingProbe:
    """A thread blocked in a receive; ``measure`` times sends until it returns."""

    def __init__(self, receive: Callable[[], Any], send: Callable[[], Any]):
        self.receive, self.send = receive, send
        self.waiting = threading.Event()
        self.returned = threading.Event()
        self.stopping = False
        self.received_at = 0.0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping:
            self.waiting.set()
            if self.receive() is not None:
                self.received_at = time.perf_counter()
                self.returned.set()

    def measure(self, count: int) -> List[float]:
        times = []
        for _ in range(count):
            self.waiting.wait(10)
            self.waiting.clear()
            time.sleep(0.003)  # let the receiver reach its blocking read
            self.returned.clear()
            started = time.perf_counter()
            self.send()
            if not self.returned.wait(10):
                raise CommandError("benchmark receiver did not get its message within 10 s")
            times.append(self.received_at - started)
        return times

    def close(self) -> None:
        self.stopping = True
        self.waiting.wait(10)
        self.send()  # wake it up so the thread ends
        self.thread.join(10)


# -- output -------------------------------------------------------------------------


def render(rows: Sequence[Row]) -> str:
    table = [[row.name, _figure(row.ours, row.unit), _figure(row.raw, row.unit), f"{row.ratio:.2f}x",
              row.raw_label] for row in rows]
    headers = ["measure", "ours", "raw limit", "speed vs raw", "raw operation"]
    return "\n".join(format_table(headers, table, left=(0, 4)))


def targets(rows: Sequence[Row]) -> List[str]:
    lines = []
    for row in rows:
        if row.name.endswith(", metrics on"):
            verdict = "met" if row.ratio >= 1 - METRICS_COST_TARGET else "NOT met"
            lines.append(f"target: {row.name[:-len(', metrics on')]} with metrics on within "
                         f"{METRICS_COST_TARGET:.0%} of off: {row.ratio:.3f}x ({verdict})")
    send = next((row for row in rows if row.name == "send"), None)
    if send:
        verdict = "met" if send.ratio >= SEND_TARGET else "NOT met"
        lines.append(f"target: send >= {SEND_TARGET}x a raw EVALSHA round trip: "
                     f"{send.ratio:.2f}x ({verdict})")
    for name, label in (("compact: send", "compact send >= {:.1f}x a raw EVALSHA round trip"),
                        ("compact: send + receive pair", "compact send + receive pair >= {:.1f}x RPUSH + LPOP")):
        row = next((row for row in rows if row.name == name), None)
        if row:
            verdict = "met" if row.ratio >= SEND_TARGET else "NOT met"
            lines.append(f"target: {label.format(SEND_TARGET)}: {row.ratio:.2f}x ({verdict})")
    for row in rows:
        if row.name.endswith("vs channels_redis"):
            verdict = "met" if row.ratio > 1 else "NOT met"
            lines.append(f"target: {row.name[:-len(' vs channels_redis')]} faster than channels_redis: "
                         f"{row.ours:.2f} vs {row.raw:.2f} ms ({verdict})")
    time_row = next((row for row in rows if row.name.startswith("Redis time per delivered")), None)
    if time_row:
        verdict = "met" if time_row.ratio >= 2 else "NOT met"
        lines.append(f"target: compact Redis time per delivered message, its plain LPOP counted too, <= half "
                     f"the classic layout's: {1 / time_row.ratio:.2f}x ({verdict})")
    scripts_row = next((row for row in rows if row.name.startswith("Redis script time per delivered")), None)
    if scripts_row:
        verdict = "met" if scripts_row.ratio >= 2 else "NOT met"
        lines.append(f"target: compact script time (EVALSHA rows) per delivered message <= half the classic "
                     f"layout's: {1 / scripts_row.ratio:.2f}x ({verdict})")
    cpu_row = next((row for row in rows if row.name.startswith("Redis CPU per delivered")), None)
    if cpu_row:
        verdict = "met" if cpu_row.ratio > 1 else "NOT met"
        lines.append(f"target: compact Redis CPU per delivered message below the classic layout's: "
                     f"{1 / cpu_row.ratio:.2f}x ({verdict})")
    group = next((row for row in rows if row.name == "send_group 1,000 members"), None)
    if group:
        verdict = "met" if group.ours < GROUP_TARGET_SECONDS * 1000 else "NOT met"
        lines.append(f"target: send_group to 1,000 members under {GROUP_TARGET_SECONDS * 1000:.0f} ms: "
                     f"{group.ours:.1f} ms ({verdict})")
    return lines


def _figure(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f} /s"
    if unit == "us":
        return f"{value:,.1f} us"
    return f"{value:,.2f} ms" if value < 100 else f"{value:,.0f} ms"


def plot(rows: Sequence[Row], path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'asgi_redis[plot]'") from None
    rates = [row for row in rows if row.unit == "/s"]
    latencies = [row for row in rows if "blocking" in row.name]
    # the classic layout's size series only ("send_group 1,000 members"), not the
    # compact, per-process, sharded, encrypted or metrics rows beside it
    groups = [row for row in rows if re.fullmatch(r"send_group [\d,]+ members", row.name)]
    figure, axes = pyplot.subplots(1, 3, figsize=(17, 5.5))
    for axis, chosen, label in ((axes[0], rates, "operations per second (higher is better)"),
                                (axes[1], latencies, "milliseconds (lower is better)")):
        positions = range(len(chosen))
        axis.barh([p + 0.2 for p in positions], [row.ours for row in chosen], 0.4, label="asgi_redis")
        axis.barh([p - 0.2 for p in positions], [row.raw for row in chosen], 0.4, label="raw redis-py limit")
        axis.set_yticks(list(positions), [f"{row.name}\n({row.ratio:.2f}x)" for row in chosen], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(label)
        if chosen is latencies:
            axis.set_xscale("log")  # sub-millisecond and 100 ms figures side by side
        axis.legend(fontsize=8)
    sizes = [int(row.name.split()[1].replace(",", "")) for row in groups]
    axes[2].plot(sizes, [row.ours for row in groups], "o-", label="asgi_redis send_group")
    axes[2].plot(sizes, [row.raw for row in groups], "s--", label="raw: ZRANGE + pipeline")
    axes[2].axhline(GROUP_TARGET_SECONDS * 1000, color="grey", linestyle=":", label="30 ms target")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("group members")
    axes[2].set_ylabel("milliseconds per send_group")
    axes[2].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


# -- running ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    check_sizes(args)
    _parse_members(args.members, args.quick)  # a usage error before any server starts
    if names_a_cluster(args):
        raise CommandError("--url names a Redis Cluster node: run 'asgi-redis bench' or "
                           "'python -m asgi_redis.tools.cluster_bench' for the cluster benchmark", 2)
    cleanup_on_sigterm()
    with ExitStack() as cleanup:
        if has_location(args):
            _, config = layer_config(args)
            hosts = list(config.pop("hosts", None) or RedisChannelLayer.default_hosts)
            single, pair = hosts[:1], hosts[:2] if len(hosts) > 1 else [hosts[0], _second_database(hosts[0])]
            where = "the configured {server}" + ("" if len(hosts) > 1 else " (2 shards: databases 0 and 1)")
        else:
            servers = [EmbeddedRedis(), EmbeddedRedis()]
            for server in servers:
                cleanup.callback(server.close)
            config, single, pair = {}, [servers[0].url], [s.url for s in servers]
            where = "embedded {server} (2-shard variant: a second one)"
        bench = Bench(single, pair, config, args)
        cleanup.callback(bench.close)
        cleanup.callback(bench.cleanup_raw_keys)
        where = where.format(server=describe_server(bench.raw))  # "Valkey 9.1.2", "Redis 7.0.15"
        title = (f"asgi_redis {__version__} on {where}: Python {platform.python_version()}, "
                 f"redis-py {redis.__version__}, {bench.rounds} alternating rounds")
        if not args.json:
            print(title, flush=True)
            print("(measuring; one line per figure)", flush=True)
        measure = bench.metrics_cost if args.metrics_cost else bench.run
        rows = measure(progress(args))
        print_result(args, title, rows, targets)
        if args.plot:
            plot(rows, args.plot, title)
            if not args.json:
                print(f"plot written to {args.plot}")
    return 0


def names_a_cluster(args: argparse.Namespace) -> bool:
    """Whether --url / --settings describe a Redis Cluster (the cluster benchmark's business)."""
    from ..cluster.layer import RedisClusterChannelLayer

    return has_location(args) and issubclass(layer_config(args)[0], RedisClusterChannelLayer)


def _second_database(host: Any) -> str:
    """The same server, next database: two shards on one Redis for the 2-shard variant."""
    if isinstance(host, (tuple, list)):
        return f"redis://{host[0]}:{host[1]}/1"
    parsed = urlparse(host)
    if parsed.scheme == "unix":
        query = "&".join(part for part in parsed.query.split("&") if part and not part.startswith("db="))
        # urlunparse would drop the empty host of unix:///path
        return f"unix://{parsed.netloc}{parsed.path}?{(query + '&' if query else '')}db=1"
    database = int((parsed.path or "/0").strip("/") or 0)
    return urlunparse(parsed._replace(path=f"/{database + 1}"))


def _parse_members(text: str, quick: bool) -> List[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--members must be comma-separated whole numbers, not {text!r}", 2) from None
    if not sizes or any(size < 1 or size > 100000 for size in sizes):
        raise CommandError(f"--members must list sizes from 1 to 100000, not {text!r}", 2)
    return [size for size in sizes if size <= 100] if quick else sizes


def _cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _command_usec(client: redis.Redis) -> Dict[str, int]:
    return {name: stats["usec"] for name, stats in client.info("commandstats").items()}


def _usec_since(client: redis.Redis, before: Dict[str, int], names: Sequence[str]) -> float:
    """Microseconds Redis spent in the top-level commands ``names`` since ``before``
    (what a script runs is inside its EVALSHA figure, so it is not counted twice)."""
    return _usec_between(before, _command_usec(client), names)


def _usec_between(before: Dict[str, int], after: Dict[str, int], names: Sequence[str]) -> float:
    return float(sum(after.get(f"cmdstat_{name}", 0) - before.get(f"cmdstat_{name}", 0) for name in names))


def _alternate(number: int) -> Sequence[str]:
    return ("ours", "raw") if number % 2 == 0 else ("raw", "ours")


# -- shared with the cluster benchmark (asgi_redis.tools.cluster_bench) ----------------


def check_sizes(args: argparse.Namespace) -> None:
    """--rounds and --ops as a usage error, before any server starts."""
    if args.rounds is not None and args.rounds < 1 or args.ops is not None and args.ops < 1:
        raise CommandError("--rounds and --ops must be 1 or more", 2)


def measure_sizes(args: argparse.Namespace) -> Tuple[int, int, int]:
    """Alternating rounds per measure, operations per round, blocking-receive samples."""
    return args.rounds or (2 if args.quick else 15), args.ops or (20 if args.quick else 200), \
        10 if args.quick else 150


def close_layers(layers: Sequence[RedisChannelLayer]) -> None:
    """Remove the benchmark's keys and close every layer it built."""
    for layer in layers:
        try:
            layer.flush()
        finally:
            layer.close()


def alternating(rounds: int, measure: Callable[[str], T],
                after_round: Optional[Callable[[], Any]] = None) -> Tuple[List[T], List[T]]:
    """``measure("ours")`` and ``measure("raw")`` once per round each, which goes first
    alternating (the machine's pace drifts); ``after_round`` runs, untimed, after each round."""
    ours: List[T] = []
    raw: List[T] = []
    for number in range(rounds):
        for which in _alternate(number):
            (ours if which == "ours" else raw).append(measure(which))
        if after_round is not None:
            after_round()
    return ours, raw


def timed_rate(ops: int, operation: Callable[[int], Any]) -> float:
    """Operations per second of ``ops`` calls ``operation(0)``, ``operation(1)``..."""
    started = time.perf_counter()
    for i in range(ops):
        operation(i)
    return ops / (time.perf_counter() - started)


def median_row(name: str, unit: str, ours: List[float], raw: List[float], raw_label: str,
               higher_is_better: bool) -> Row:
    """A row of the medians, its ratio the median of the per-round ratios."""
    ratios = [(o / r) if higher_is_better else (r / o) for o, r in zip(ours, raw)]
    return Row(name, unit, statistics.median(ours), statistics.median(raw), raw_label, statistics.median(ratios))


def blocking_times(ours: _BlockingProbe, raw: _BlockingProbe, rounds: int,
                   samples: int) -> Tuple[List[float], List[float]]:
    """About ``samples`` wake-up times of each probe, in alternating rounds."""
    per_round = max(1, samples // rounds)
    ours_runs, raw_runs = alternating(rounds, lambda which: (ours if which == "ours" else raw).measure(per_round))
    return [t for run in ours_runs for t in run], [t for run in raw_runs for t in run]


def latency_rows(name: str, ours_times: List[float], raw_times: List[float]) -> List[Row]:
    """The p50 and p99 rows of a blocking receive against an RPUSH waking a BLPOP."""
    rows = []
    for percent in (50, 99):
        ours_value, raw_value = percentile(ours_times, percent), percentile(raw_times, percent)
        rows.append(Row(f"{name} p{percent}", "ms", ours_value * 1000, raw_value * 1000,
                        "RPUSH waking a BLPOP", raw_value / ours_value))
    return rows


def progress(args: argparse.Namespace) -> Callable[[Row], None]:
    """What prints one line per figure as it is measured (nothing with --json)."""
    def report(row: Row) -> None:
        if not args.json:
            print(f"  {row.name}: {_figure(row.ours, row.unit)} vs {_figure(row.raw, row.unit)} "
                  f"raw, {row.ratio:.2f}x", flush=True)
    return report


def print_result(args: argparse.Namespace, title: str, rows: Sequence[Row],
                 targets: Callable[[Sequence[Row]], List[str]]) -> None:
    """The rows as JSON (--json), else the table and the targets' verdicts."""
    if args.json:
        print(json.dumps({"title": title, "rows": [asdict(row) for row in rows]}, indent=1))
    else:
        print("\n" + render(rows) + "\n\n" + "\n".join(targets(rows)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineErrorParser(prog="python -m asgi_redis.bench", description=__doc__.split("\n\n")[0])
    add_layer_options(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(parser.prog, run, args)


if __name__ == "__main__":
    sys.exit(main())
