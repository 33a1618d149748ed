"""``asgi-redis`` / ``python -m asgi_redis``: look inside a layer, empty it,
watch it work, measure it.

Subcommands: demo, stats, inspect, flush, bench, exporter. Each finds its layer with
--url (repeat for shards) and --prefix, or --settings/--alias to read a
Django project's CHANNEL_LAYERS. Failures are one line on stderr; the exit
status is 2 for a usage error, 1 for a runtime error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, Optional, Sequence

from .. import __version__
from ..core import RedisChannelLayer
from . import inspection
from .command_options import (
    RUNTIME_ERROR,
    CommandError,
    OneLineErrorParser,
    add_layer_options,
    layer_from_args,
    positive_float,
    positive_int,
    run_command,
)
from .output import format_table

PROG = "asgi-redis"
_STAT_COLUMNS = ("messages_count", "messages_pending", "messages_max_age", "channel_full_count")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Operate an asgi_redis channel layer: demo, stats, inspect, flush, bench, exporter.",
        epilog="Run 'asgi-redis COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"asgi_redis {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="watch the layer work live (starts an embedded Valkey or Redis when no --url is given)",
        description="Show the layer working: worker processes consuming a channel, replies on a "
                    "'?' channel, a group broadcast; live messages/s and latency, then a summary. "
                    "Without --url or --settings it starts its own Redis. It writes under its own "
                    "prefix and removes its keys at the end.",
    )
    add_layer_options(demo)
    from .demo import add_arguments as add_demo_arguments
    add_demo_arguments(demo)
    demo.set_defaults(func=_command_demo)

    stats = commands.add_parser(
        "stats", help="global and per-channel statistics",
        description="Global and per-channel statistics (messages_count, messages_pending, "
                    "messages_max_age, channel_full_count) of the layer.",
    )
    add_layer_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON (one object per refresh)")
    stats.add_argument("--watch", nargs="?", type=positive_float, const=2.0, metavar="SECONDS",
                       help="refresh every SECONDS (default 2) until interrupted")
    stats.add_argument("--count", type=positive_int, metavar="N",
                       help="with --watch: stop after N refreshes")
    stats.add_argument("--limit", type=positive_int, default=50,
                       help="at most this many channels (default 50)")
    stats.set_defaults(func=command_stats)

    inspect = commands.add_parser(
        "inspect", help="channels (pending, oldest age) and groups (members), per shard",
        description="Channels with their pending count and the age of their oldest message, "
                    "groups with their member count, per shard. Uses SCAN, never KEYS.",
    )
    add_layer_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--limit", type=positive_int, default=100,
                         help="at most this many channels and groups per shard (default 100); "
                              "the scan also stops after LIMIT x 1000 keys")
    inspect.set_defaults(func=command_inspect)

    flush = commands.add_parser(
        "flush", help="delete every message, group and statistic of the layer",
        description="Delete every key under the layer's prefix and statistics prefix on every "
                    "shard (SCAN in batches, never KEYS) and say how many were removed per shard.",
    )
    add_layer_options(flush)
    flush.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    flush.set_defaults(func=command_flush)

    bench = commands.add_parser(
        "bench", help="measure the layer beside the raw redis-py limit",
        description="The benchmark of asgi_redis.bench: our figures beside the raw redis-py limit "
                    "measured in the same run, with the ratio.",
    )
    add_layer_options(bench)
    from .bench import add_arguments as add_bench_arguments
    add_bench_arguments(bench)
    bench.set_defaults(func=_command_bench)

    exporter = commands.add_parser(
        "exporter", help="serve the layer's state as Prometheus metrics on /metrics",
        description="Serve /metrics for Prometheus: pending messages and oldest age per channel, "
                    "members per group, the statistics counters, per shard up, round trip, memory "
                    "and clients. Each scrape walks Redis with SCAN within a key budget, one at a "
                    "time. Needs the 'metrics' extra (prometheus_client).",
    )
    add_layer_options(exporter)
    from .exporter import add_arguments as add_exporter_arguments
    add_exporter_arguments(exporter)
    exporter.set_defaults(func=_command_exporter)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.error("choose a command: demo, stats, inspect, flush, bench or exporter")
    return run_command(f"{PROG} {args.command}", args.func, args)


# -- stats ---------------------------------------------------------------------


def collect_statistics(layer: RedisChannelLayer, limit: int) -> Dict[str, Any]:
    channels = inspection.statistics_channels(layer, limit)
    return {
        "time": time.time(),
        "shards": [name for name, _ in inspection.shards_of(layer)],
        "prefix": layer.prefix,
        "stats_prefix": layer.stats_prefix,
        "global": layer.global_statistics(),
        "channels": {name: layer.channel_statistics(name) for name in channels},
    }


def command_stats(args: argparse.Namespace) -> int:
    layer = layer_from_args(args)
    previous: Optional[Dict[str, Any]] = None
    refreshes = 0
    try:
        while True:
            snapshot = collect_statistics(layer, args.limit)
            if previous is not None:
                elapsed = max(1e-6, snapshot["time"] - previous["time"])
                sent = snapshot["global"]["messages_count"] - previous["global"]["messages_count"]
                snapshot["messages_per_second"] = round(max(0, sent) / elapsed, 1)
            if refreshes == 0 and not snapshot["channels"] and not any(snapshot["global"].values()):
                _warn_if_wrong_prefix(layer, prefix_empty=True, stats_empty=True)
            if args.json:
                print(json.dumps(snapshot, sort_keys=True), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\033[H\033[J")  # clear the screen between refreshes
                print(_render_statistics(snapshot), flush=True)
            refreshes += 1
            if not args.watch or (args.count and refreshes >= args.count):
                return 0
            previous = snapshot
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0  # the normal way to leave --watch
    finally:
        layer.close()


def _render_statistics(snapshot: Dict[str, Any]) -> str:
    shards = snapshot["shards"]
    head = (f"{len(shards)} shard{'s' if len(shards) != 1 else ''}: {', '.join(shards)}  "
            f"prefix {snapshot['prefix']!r}  stats prefix {snapshot['stats_prefix']!r}")
    totals = snapshot["global"]
    lines = [
        head,
        f"global: messages_count {totals['messages_count']:,}  "
        f"channel_full_count {totals['channel_full_count']:,}"
        + (f"  ({snapshot['messages_per_second']:,} messages/s)" if "messages_per_second" in snapshot else "")
    ]
    by_traffic = sorted(snapshot["channels"].items(), key=lambda item: -item[1]["messages_count"])
    rows = [[name] + [f"{stats[column]:,}" for column in _STAT_COLUMNS] for name, stats in by_traffic]
    if rows:
        lines += ["", *format_table(["channel", *_STAT_COLUMNS], rows)]
    else:
        lines.append("no channel statistics")
    return "\n".join(lines)


# -- inspect --------------------------------------------------------------------


def command_inspect(args: argparse.Namespace) -> int:
    layer = layer_from_args(args)
    try:
        contents = [
            inspection.inspect_shard(layer, name, client, args.limit)
            for name, client in inspection.shards_of(layer)
        ]
        if all(shard.scanned == 0 for shard in contents):
            _warn_if_wrong_prefix(layer, prefix_empty=True, stats_empty=False)
    finally:
        layer.close()
    if args.json:
        print(json.dumps({"prefix": layer.prefix, "shards": [c.as_dict() for c in contents]}, sort_keys=True))
        return 0
    blocks = [f"prefix {layer.prefix!r}  expiry {layer.expiry} s  group_expiry {layer.group_expiry} s"]
    for shard in contents:
        blocks.append(_render_shard(shard))
    print("\n\n".join(blocks))
    return 0


def _render_shard(shard: inspection.ShardContents) -> str:
    lines = [
        f"shard {shard.shard}: {_plural(len(shard.channels), 'channel')}, "
        f"{_plural(len(shard.groups), 'group')}, "
        f"{_plural(shard.bodies, 'message body', 'message bodies')} ({_plural(shard.scanned, 'key')} scanned"
        + ("" if shard.complete else ", stopped at --limit") + ")"
    ]
    if shard.channels:
        rows = [[c.name, f"{c.pending:,}", "-" if c.oldest_age is None else f"{c.oldest_age:.1f} s"]
                for c in shard.channels]
        lines += ["  " + line for line in format_table(["channel", "pending", "oldest"], rows)]
    if shard.groups:
        rows = [[g.name, f"{g.members:,}", f"{g.stored - g.members:,}"] for g in shard.groups]
        lines += ["  " + line for line in format_table(["group", "members", "expired"], rows)]
    return "\n".join(lines)


# -- flush ----------------------------------------------------------------------


def command_flush(args: argparse.Namespace) -> int:
    layer = layer_from_args(args)
    try:
        shards = [name for name, _ in inspection.shards_of(layer)]
        if not args.yes:
            question = (f"Delete every message, group and statistic under {layer.prefix!r} and "
                        f"{layer.stats_prefix!r} on {', '.join(shards)}? [y/N] ")
            sys.stderr.write(question)
            sys.stderr.flush()
            answer = sys.stdin.readline()
            if not answer:
                raise CommandError(
                    "flush cancelled: no answer on standard input (pass --yes to skip the question)"
                )
            if answer.strip().lower() not in ("y", "yes"):
                print("flush cancelled", file=sys.stderr)
                return RUNTIME_ERROR
        counts = layer.flush_counts()
        if not any(counts.values()):
            _warn_if_wrong_prefix(layer, prefix_empty=True, stats_empty=True)
    finally:
        layer.close()
    for shard, removed in counts.items():
        print(f"{shard}: removed {_plural(removed, 'key')}")
    if len(counts) > 1:
        print(f"total: removed {_plural(sum(counts.values()), 'key')}")
    return 0


# -- demo and bench live in their own modules -------------------------------------


def _command_demo(args: argparse.Namespace) -> int:
    from .demo import run
    return run(args)


def _command_bench(args: argparse.Namespace) -> int:
    from .bench import names_a_cluster, run
    if names_a_cluster(args):  # --url of a cluster node, or a cluster BACKEND
        from .cluster_bench import run as run_cluster_bench
        return run_cluster_bench(args)
    return run(args)


def _command_exporter(args: argparse.Namespace) -> int:
    from .exporter import run
    return run(args)


# -- helpers ----------------------------------------------------------------------


def _warn_if_wrong_prefix(layer: RedisChannelLayer, prefix_empty: bool, stats_empty: bool) -> None:
    prefixes, stats_prefixes = inspection.other_layer_prefixes(layer)
    if prefix_empty and prefixes:
        print(f"{PROG}: warning: nothing under prefix {layer.prefix!r}, but this Redis holds layer keys "
              f"under {', '.join(map(repr, prefixes))} (wrong --prefix?)", file=sys.stderr)
    if stats_empty and stats_prefixes:
        print(f"{PROG}: warning: no statistics under {layer.stats_prefix!r}, but this Redis has some "
              f"under {', '.join(map(repr, stats_prefixes))} (wrong --stats-prefix?)", file=sys.stderr)


def _plural(count: int, word: str, plural: Optional[str] = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
