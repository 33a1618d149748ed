"""Sync client vs ``async_to_sync(channels_redis layer)``, same Redis, same run.

    python -m asgi_redis.modern.bench [--url redis://127.0.0.1:6379] [--members 100] [--calls 300]

Needs channels_redis 4 (and so asgiref 3) installed next to asgi_redis.
Without ``--url`` it starts a throwaway server (asgi_redis.tools.embedded)
on a free port and stops it, by its pid, at the end. Each
producer runs from a plain thread with no event loop, as a Django view or a
Celery task does; the channels_redis layer inside one long-lived event loop
is measured too, as the best case an async producer can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import redis

from ..modern.client import SyncChannelsRedisClient

PREFIX = "asgibench"
GROUP = "bench"


def run_benchmark(url: str, members: int = 100, calls: int = 300,
                  encrypted: bool = False) -> Dict[str, Dict[str, float]]:
    """Calls per second and connections opened per call, for each producer."""
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer

    # room for every message of every round, so no producer meets a full channel
    config: Dict[str, Any] = {"hosts": [url], "prefix": PREFIX, "capacity": calls * 6 + 10, "expiry": 600}
    if encrypted:
        config["symmetric_encryption_keys"] = ["benchmark key"]
    client = SyncChannelsRedisClient(**config)
    layer = RedisChannelLayer(**config)
    client.flush()
    # websocket consumers: specific channels of 10 server processes
    processes = [uuid.uuid4().hex for _ in range(10)]
    for index in range(members):
        client.group_add(GROUP, f"specific.{processes[index % 10]}!{uuid.uuid4().hex}")
    message = {"type": "chat.message", "text": "x" * 100}

    async def in_one_loop() -> None:
        for _ in range(calls):
            await layer.group_send(GROUP, message)

    producers: Dict[str, Callable[[], None]] = {
        "sync group_send": lambda: client.group_send(GROUP, message),
        "async_to_sync(group_send)": lambda: async_to_sync(layer.group_send)(GROUP, message),
        "sync send": lambda: client.send("bench.jobs", message),
        "async_to_sync(send)": lambda: async_to_sync(layer.send)("bench.jobs", message),
    }
    probe = redis.Redis.from_url(url)
    rates: Dict[str, float] = {}
    connections: Dict[str, float] = {}
    try:
        for label, call in producers.items():
            rates[label], connections[label] = _measure(probe, calls, lambda call=call: _repeat(call, calls))
        label = "channels_redis group_send, one event loop"
        rates[label], connections[label] = _measure(probe, calls, lambda: asyncio.run(in_one_loop()))
    finally:
        client.flush()
        client.close()
        probe.close()
    return {"calls_per_second": rates, "connections_per_call": connections}


def _repeat(call: Callable[[], None], times: int) -> None:
    for _ in range(times):
        call()


def _measure(probe: redis.Redis, calls: int, work: Callable[[], None]) -> tuple:
    """Run ``work`` in a fresh plain thread: (calls per second, connections opened per call)."""
    before = int(probe.info("stats")["total_connections_received"])
    elapsed = []

    def timed() -> None:
        start = time.perf_counter()
        work()
        elapsed.append(time.perf_counter() - start)

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join()
    if not elapsed:
        raise RuntimeError("benchmark producer failed; see the traceback above")
    opened = int(probe.info("stats")["total_connections_received"]) - before
    return calls / elapsed[0], opened / calls


def producer_table(title: str, figures: Dict[str, Dict[str, float]]) -> List[str]:
    """The lines of the table both modern benchmarks print: one a producer."""
    rates, connections = figures["calls_per_second"], figures["connections_per_call"]
    lines = [f"{title:<45} {'calls/s':>9} {'ms/call':>8} {'conn/call':>9}"]
    for label, rate in rates.items():
        lines.append(f"{label:<45} {rate:>9.0f} {1000 / rate:>8.2f} {connections[label]:>9.2f}")
    return lines


def format_report(figures: Dict[str, Dict[str, float]], members: int) -> str:
    rates = figures["calls_per_second"]
    lines = producer_table(f"producer (group of {members} members)", figures)
    speedup = rates["sync group_send"] / rates["async_to_sync(group_send)"]
    lines.append(f"sync group_send is {speedup:.1f}x async_to_sync(group_send)")
    return "\n".join(lines)


@contextlib.contextmanager
def _spawn_redis() -> Iterator[str]:
    from .embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


def main(argv: Optional[Any] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway server)")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--encrypted", action="store_true", help="both sides use symmetric_encryption_keys")
    args = parser.parse_args(argv)
    server = _spawn_redis() if args.url is None else contextlib.nullcontext(args.url)
    with server as url:
        figures = run_benchmark(url, args.members, args.calls, args.encrypted)
        print(format_report(figures, args.members) + (" (encrypted)" if args.encrypted else ""))


if __name__ == "__main__":
    main()
