"""The cluster benchmark: RedisClusterChannelLayer beside bare redis-py on the same node, in one run.

``python -m asgi_redis.tools.cluster_bench`` starts its own 3-master loopback
cluster; with ``--url`` of a cluster node (or ``asgi-redis bench --url`` of
one: cluster mode is detected) it measures that cluster. Each figure of ours
is printed beside bare redis-py on the node that serves the channel, over
the same connection pool, in alternating rounds (the ratio is the median of
the per-round ratios, as in ``asgi_redis.bench``):

- send/s                   vs  EVALSHA of 'return 1' on that node
- send + receive pairs/s   vs  RPUSH + LPOP on that node
- blocking receive p50/99  vs  BLPOP woken by an RPUSH
- send_group, 1,000 members of 1 and of 4 processes  vs  ZRANGE, then one
  pipeline of RPUSH per master

Targets (issue 13): send >= 0.8x the bare EVALSHA; send_group to 1,000
members over 4 processes under 20 ms.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import sys
import time
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Sequence

import redis

from .. import __version__
from ..cluster.keyslot import key_slot
from ..cluster.layer import RedisClusterChannelLayer
from ..scripts import Command
from .bench import (
    MESSAGE,
    TRIVIAL_SCRIPT,
    Row,
    _BlockingProbe,
    alternating,
    blocking_times,
    check_sizes,
    close_layers,
    latency_rows,
    measure_sizes,
    median_row,
    print_result,
    progress,
    timed_rate,
)
from .command_options import (
    CommandError,
    OneLineErrorParser,
    add_layer_options,
    build_layer,
    has_location,
    layer_config,
    run_command,
)
from .embedded import cleanup_on_sigterm
from .embedded_cluster import EmbeddedCluster

SEND_TARGET = 0.8
GROUP_TARGET_MS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a few operations only (a smoke test)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per measure (default 15)")
    parser.add_argument("--ops", type=int, help="operations per round (default 200)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


class ClusterBench:
    def __init__(self, config: Dict[str, Any], args: argparse.Namespace):
        self.rounds, self.ops, self.samples = measure_sizes(args)
        self.members = 100 if args.quick else 1000
        self.tag = secrets.token_hex(3)
        self.config = {**config, "prefix": f"asgi-bench-{self.tag}:",
                       "stats_prefix": f"asgi-bench-meta-{self.tag}:", "capacity": 10 ** 9, "expiry": 60}
        self.layer = self._layer()
        self.layers = [self.layer]
        self.rows: List[Row] = []

    def _layer(self) -> RedisClusterChannelLayer:
        layer = build_layer(RedisClusterChannelLayer, self.config)
        if not isinstance(layer, RedisClusterChannelLayer):  # pragma: no cover - build_layer's class
            raise CommandError("not a cluster layer")
        layer.flush()
        return layer

    def node_of(self, key: bytes) -> redis.Redis:
        """Bare redis-py on the node serving ``key``: the layer's own pool for that node."""
        return self.layer.router.client(self.layer.router.owner(key_slot(key)))

    def close(self) -> None:
        close_layers(self.layers)

    def run(self, report: Callable[[Row], None]) -> List[Row]:
        layer = self.layer
        channel = "bench.send!x"
        node = self.node_of(layer.layout.queue_key("bench.send!"))
        sha = node.script_load(TRIVIAL_SCRIPT)
        report(self.rate("cluster: send", lambda i: layer.send(channel, MESSAGE),
                         "EVALSHA of 'return 1' on the node", lambda i: node.evalsha(sha, 0)))
        pair_key = layer.layout.queue_key("bench.pair!")
        pair_node = self.node_of(pair_key)
        raw_key = b"{" + pair_key.partition(b"{")[2].partition(b"}")[0] + b"}asgi-bench-raw"
        report(self.rate("cluster: send + receive pair", lambda i: self._pair("bench.pair!x", ["bench.pair!"]),
                         "RPUSH + LPOP on the node",
                         lambda i: (pair_node.rpush(raw_key, b"x" * 200), pair_node.lpop(raw_key))))
        report(self.rate("cluster: send + receive pair, normal channel",
                         lambda i: self._pair("bench.normal", ["bench.normal"]), "RPUSH + LPOP on the node",
                         lambda i: (pair_node.rpush(raw_key, b"x" * 200), pair_node.lpop(raw_key))))
        for row in self.blocking_latency(raw_key, pair_node):
            report(row)
        for processes in (1, 4):
            report(self.group(processes))
        pair_node.delete(raw_key)
        return self.rows

    def rate(self, name: str, ours: Callable[[int], Any], raw_label: str, raw: Callable[[int], Any]) -> Row:
        ours_rates, raw_rates = alternating(
            self.rounds, lambda which: timed_rate(self.ops, ours if which == "ours" else raw))
        return self._add(median_row(name, "/s", ours_rates, raw_rates, raw_label, higher_is_better=True))

    def _pair(self, channel: str, receive_on: List[str]) -> None:
        self.layer.send(channel, MESSAGE)
        if self.layer.receive(receive_on)[0] is None:
            raise CommandError("benchmark lost a message: receive found nothing right after send")

    def blocking_latency(self, raw_key: bytes, node: redis.Redis) -> List[Row]:
        sender = self._layer()
        self.layers.append(sender)
        ours = _BlockingProbe(lambda: self.layer.receive(["bench.block!"], block=True)[1],
                              lambda: sender.send("bench.block!x", MESSAGE))
        receiver = redis.Redis(connection_pool=node.connection_pool)
        block_key = raw_key + b"-block"
        raw = _BlockingProbe(lambda: receiver.blpop([block_key], timeout=5),
                             lambda: node.rpush(block_key, b"x" * 200))
        try:
            ours_times, raw_times = blocking_times(ours, raw, self.rounds, self.samples)
        finally:
            ours.close()
            raw.close()
        return [self._add(row) for row in latency_rows("cluster: blocking receive", ours_times, raw_times)]

    def group(self, processes: int) -> Row:
        layer = self.layer
        group = f"bench.group{processes}"
        names = [f"daphne.response.{self.tag}{i % processes}!{i:06d}" for i in range(self.members)]
        for name in names:
            layer.group_add(group, name)
        layer.group_channels(group)  # scripts loaded
        body = layer.serializer.encode(MESSAGE)
        repeats = max(1, min(self.ops // 20, 20))

        def one(which: str) -> float:
            started = time.perf_counter()
            for _ in range(repeats):
                if which == "ours":
                    layer.send_group(group, MESSAGE)
                else:
                    self._raw_group(group, body)
            elapsed = (time.perf_counter() - started) / repeats
            self._drain(names, processes)
            return elapsed * 1000

        ours_ms, raw_ms = alternating(self.rounds, one)
        return self._add(median_row(f"cluster: send_group {self.members:,} members of {processes} "
                                    f"process{'es' if processes > 1 else ''}", "ms", ours_ms, raw_ms,
                                    "ZRANGE + one RPUSH pipeline per master", higher_is_better=False))

    def _raw_group(self, group: str, body: bytes) -> None:
        group_key = self.layer.layout.group_key(group).encode("utf8")
        members = self.node_of(group_key).zrange(group_key, 0, -1)
        pipelines: Dict[Any, Any] = {}
        for member in members:
            key = b"{" + member + b"}asgi-bench-raw"
            node = self.node_of(key)
            pipeline = pipelines.get(id(node))
            if pipeline is None:
                pipeline = pipelines[id(node)] = node.pipeline(transaction=False)
            pipeline.rpush(key, body)
            pipeline.expire(key, 60)
        for pipeline in pipelines.values():
            pipeline.execute()

    def _drain(self, names: List[str], processes: int) -> None:
        # not timed: keeps queues short and memory flat (the group itself stays)
        queues = {self.layer.layout.queue_key(name.partition("!")[0] + "!") for name in names}
        raw = {b"{" + name.encode() + b"}asgi-bench-raw" for name in names}
        self.layer.router.run([Command(("DEL", key)) for key in queues | raw], "bench cleanup")

    def _add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def targets(rows: Sequence[Row]) -> List[str]:
    lines = []
    send = next((row for row in rows if row.name == "cluster: send"), None)
    if send:
        lines.append(f"target: cluster send >= {SEND_TARGET}x a bare EVALSHA on the same node: {send.ratio:.2f}x "
                     f"({'met' if send.ratio >= SEND_TARGET else 'NOT met'})")
    group = next((row for row in rows if row.name.startswith("cluster: send_group") and "of 4" in row.name), None)
    if group:
        lines.append(f"target: send_group to {group.name.split()[2]} members over 4 processes under "
                     f"{GROUP_TARGET_MS:.0f} ms: {group.ours:.1f} ms "
                     f"({'met' if group.ours < GROUP_TARGET_MS else 'NOT met'})")
    return lines


def run(args: argparse.Namespace) -> int:
    check_sizes(args)
    cleanup_on_sigterm()
    with ExitStack() as cleanup:
        if has_location(args):
            backend, config = layer_config(args)
            if not issubclass(backend, RedisClusterChannelLayer):
                raise CommandError("--url does not name a Redis Cluster node (cluster_enabled is 0)", 2)
            where = "the configured cluster"
        else:
            nodes = EmbeddedCluster(masters=3, replicas=0)
            cleanup.callback(nodes.close)
            config = {"hosts": [nodes.url]}
            where = f"an embedded 3-master loopback cluster (server {nodes.version()})"
        bench = ClusterBench(config, args)
        cleanup.callback(bench.close)
        title = (f"asgi_redis {__version__} RedisClusterChannelLayer on {where}: "
                 f"{len(bench.layer.router.masters())} masters, Python {platform.python_version()}, "
                 f"redis-py {redis.__version__}, {bench.rounds} alternating rounds")
        if not args.json:
            print(title, flush=True)
        print_result(args, title, bench.run(progress(args)), targets)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineErrorParser(prog="python -m asgi_redis.tools.cluster_bench", description=__doc__.split("\n\n")[0])
    add_layer_options(parser)
    add_arguments(parser)
    return run_command(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
