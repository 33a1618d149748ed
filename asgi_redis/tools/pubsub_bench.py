"""SyncPubSubClient vs ``async_to_sync(RedisPubSubChannelLayer)``, same Redis, same run.

    python -m asgi_redis.modern.pubsub_bench [--url redis://127.0.0.1:6379] [--subscribers 10] [--calls 300]

Needs channels_redis 4 (and so asgiref 3) installed next to asgi_redis.
Without ``--url`` it starts a throwaway server and stops it at the end, as
:mod:`asgi_redis.tools.modern_bench` does. ``--subscribers`` plain connections
subscribe to the group's channel (one per consumer process that has members
in the group) and one to the sent-to channel, so every PUBLISH is delivered;
after each producer the benchmark checks that every subscriber received
every message. Producers run from a plain thread with no event loop, as a
Django view or a Celery task does; the layer inside one long-lived event loop
is measured too, as the best case an async producer can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import redis

from ..modern.pubsub import SyncPubSubClient
from ..modern.pubsub_wire import group_channel
from .modern_bench import _measure, _repeat, _spawn_redis, producer_table

PREFIX = "asgibench"
GROUP = "bench"
CHANNEL = "bench.jobs"


def run_benchmark(url: str, subscribers: int = 10, calls: int = 300,
                  encrypted: bool = False, rounds: int = 3) -> Dict[str, Dict[str, float]]:
    """Calls per second and connections opened per call, for each producer.

    The producers take turns for ``rounds`` rounds and each reports its
    median, so a burst of load on a shared machine skews one round, not a producer.
    """
    from asgiref.sync import async_to_sync
    from channels_redis.pubsub import RedisPubSubChannelLayer

    config: Dict[str, Any] = {"hosts": [url], "prefix": PREFIX}
    if encrypted:
        config["symmetric_encryption_keys"] = ["benchmark key"]
    client = SyncPubSubClient(**config)
    layer = RedisPubSubChannelLayer(**config)
    message = {"type": "chat.message", "text": "x" * 100}
    listeners = [_subscribe(url, group_channel(PREFIX, GROUP)) for _ in range(subscribers)]
    job_listener = _subscribe(url, CHANNEL)

    async def in_one_loop() -> None:
        for _ in range(calls):
            await layer.group_send(GROUP, message)

    group_producers: Dict[str, Callable[[], None]] = {
        "sync group_send": lambda: _repeat(lambda: client.group_send(GROUP, message), calls),
        "async_to_sync(group_send)": lambda: _repeat(
            lambda: async_to_sync(layer.group_send)(GROUP, message), calls),
        "channels_redis group_send, one event loop": lambda: asyncio.run(in_one_loop()),
    }
    send_producers: Dict[str, Callable[[], None]] = {
        "sync send": lambda: _repeat(lambda: client.send(CHANNEL, message), calls),
        "async_to_sync(send)": lambda: _repeat(lambda: async_to_sync(layer.send)(CHANNEL, message), calls),
    }
    probe = redis.Redis.from_url(url)
    samples: Dict[str, List[Tuple[float, float]]] = {}
    try:
        for _ in range(rounds):
            for producers, receivers in ((group_producers, listeners), (send_producers, [job_listener])):
                for label, work in producers.items():
                    samples.setdefault(label, []).append(_measure(probe, calls, work))
                    _check_delivered(label, receivers, calls)
    finally:
        for listener in listeners + [job_listener]:
            listener.close()
        client.close()
        probe.close()
    rates = {label: statistics.median(rate for rate, _ in runs) for label, runs in samples.items()}
    connections = {label: max(opened for _, opened in runs) for label, runs in samples.items()}
    return {"calls_per_second": rates, "connections_per_call": connections}


def _subscribe(url: str, name: str) -> Any:
    listener = redis.Redis.from_url(url).pubsub()
    listener.subscribe(name)
    confirmation = listener.get_message(timeout=10)  # Redis has the subscription
    if not confirmation or confirmation["type"] != "subscribe":
        raise RuntimeError(f"could not subscribe to {name!r}: {confirmation!r}")
    return listener


def _check_delivered(label: str, listeners: List[Any], calls: int) -> None:
    """Every subscriber got every message: the figures are for delivered messages."""
    for listener in listeners:
        received = 0
        deadline = time.monotonic() + 30
        while received < calls and time.monotonic() < deadline:
            if listener.get_message(timeout=1) is not None:
                received += 1
        if received != calls:
            raise RuntimeError(f"{label}: a subscriber received {received} of {calls} messages")


def format_report(figures: Dict[str, Dict[str, float]], subscribers: int) -> str:
    rates = figures["calls_per_second"]
    lines = producer_table(f"pub/sub producer ({subscribers} subscribed processes)", figures)
    for kind in ("group_send", "send"):
        speedup = rates[f"sync {kind}"] / rates[f"async_to_sync({kind})"]
        lines.append(f"sync {kind} is {speedup:.1f}x async_to_sync({kind})")
    return "\n".join(lines)


def main(argv: Optional[Any] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway server)")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every producer; medians reported")
    parser.add_argument("--encrypted", action="store_true", help="both sides use symmetric_encryption_keys")
    args = parser.parse_args(argv)
    server = _spawn_redis() if args.url is None else contextlib.nullcontext(args.url)
    with server as url:
        figures = run_benchmark(url, args.subscribers, args.calls, args.encrypted, args.rounds)
        print(format_report(figures, args.subscribers) + (" (encrypted)" if args.encrypted else ""))


if __name__ == "__main__":
    main()
