"""``asgi-redis demo``: the layer working live, in about fifteen seconds.

Worker processes consume the normal channel ``demo.work`` and answer each
message on the demo's own ``?`` reply channel; then a group whose members are
the workers' process-specific (``!``) channels gets broadcasts. A progress
line shows messages/s and latency while it runs, a summary closes it.

Without --url or --settings it starts its own Valkey or Redis server (see
asgi_redis.tools.embedded). It writes under a prefix of its own, removes its keys
at the end and stops everything it started, by pid, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import time
from contextlib import ExitStack
from typing import Any, Dict, List, Type

from ..core import RedisChannelLayer
from .command_options import CommandError, finish_config, has_location, layer_config
from .embedded import EmbeddedRedis, cleanup_on_sigterm
from .output import percentile

WORK_CHANNEL = "demo.work"
GROUP = "demo.room"
# Work messages in flight per worker: enough to keep each busy, few enough that
# the latency shown is the layer's, not time spent waiting in a long queue.
_IN_FLIGHT_PER_WORKER = 2
_START_TIMEOUT = 60.0  # a cold start of a spawned interpreter on a busy machine is slow
_REPLY_TIMEOUT = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_count(1, 16), default=3, help="worker processes (default 3)")
    parser.add_argument("--members", type=_count(1, 10000), default=100, help="group members (default 100)")
    parser.add_argument("--broadcasts", type=_count(1, 1000), default=20,
                        help="messages sent to the group (default 20)")
    parser.add_argument("--duration", type=_seconds, default=8.0,
                        help="seconds of work traffic (default 8)")


def worker_main(index: int, backend: Type[RedisChannelLayer], config: Dict[str, Any], reply: str) -> None:
    """One worker process: answer every work and broadcast message on ``reply``."""
    parent = os.getppid()
    layer = backend(**config)
    layer.blpop_timeout = 1  # notice a vanished parent within a second
    own_channel = f"demo.worker{index}!"
    layer.send(reply, {"kind": "ready", "worker": index, "pid": os.getpid()})
    try:
        while os.getppid() == parent:
            channel, message = layer.receive([WORK_CHANNEL, own_channel], block=True)
            if channel is None:
                continue
            kind = message.get("kind")
            if kind == "stop":
                return
            answer = {"kind": kind, "worker": index, "n": message["n"], "member": channel,
                      "sent": message["sent"], "received": time.time()}
            try:
                layer.send(message["reply"], answer)
            except layer.ChannelFull:
                pass  # the demo counts it as lost; nothing else to do
    except KeyboardInterrupt:
        return  # Ctrl-C reaches the whole process group; the parent cleans up
    except Exception as error:  # the parent reports the exit status; one line here is enough
        print(f"demo worker {index}: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        layer.close()


class Demo:
    def __init__(self, backend: Type[RedisChannelLayer], config: Dict[str, Any], args: argparse.Namespace,
                 out: Any = None):
        self.backend, self.config, self.args = backend, config, args
        self.out = out or sys.stdout
        self.live = self.out.isatty()
        self.layer = backend(**config)
        self.reply = self.layer.new_channel("demo.reply?")
        self.workers: List[multiprocessing.Process] = []
        self.results: Dict[str, Any] = {}

    # -- processes ---------------------------------------------------------

    def start_workers(self) -> None:
        context = multiprocessing.get_context("spawn")  # the same on every OS; no forked sockets
        for index in range(self.args.workers):
            process = context.Process(
                target=worker_main, args=(index, self.backend, self.config, self.reply),
                name=f"asgi-redis-demo-worker-{index}", daemon=True,
            )
            process.start()
            self.workers.append(process)
        ready = set()
        deadline = time.monotonic() + _START_TIMEOUT
        while len(ready) < len(self.workers):
            for process in self.workers:
                if process.exitcode is not None:
                    raise CommandError(
                        f"demo worker {process.name} exited at start (status {process.exitcode})"
                    )
            if time.monotonic() > deadline:
                raise CommandError(f"demo workers did not start within {_START_TIMEOUT:.0f} s")
            _, message = self.layer.receive([self.reply], block=True)
            if message and message.get("kind") == "ready":
                ready.add(message["worker"])
        pids = ", ".join(str(p.pid) for p in self.workers)
        self.say(f"started {len(self.workers)} worker processes (pids {pids}), each receiving on "
                 f"{WORK_CHANNEL!r} and its own 'demo.workerN!' channel")

    def stop_workers(self) -> None:
        for index, process in enumerate(self.workers):
            if process.is_alive():
                try:
                    self.layer.send(f"demo.worker{index}!stop", {"kind": "stop"})
                except Exception:
                    pass  # Redis is gone: terminate below
        for process in self.workers:
            process.join(5)
            if process.is_alive():
                process.terminate()  # our own child, by its pid
                process.join(5)

    # -- phase 1: a normal channel shared by the workers ---------------------

    def run_work(self) -> None:
        self.say(f"\nwork: sending to {WORK_CHANNEL!r} for {self.args.duration:g} s, "
                 f"every answer comes back on {self.reply!r}")
        per_worker = [0] * len(self.workers)
        one_way, round_trip, recent = [], [], []
        sent = received = 0
        started = time.monotonic()
        stop_sending = started + self.args.duration
        progress = Progress(self)
        while True:
            now = time.monotonic()
            sending = now < stop_sending
            if not sending and received >= sent:
                break
            if sending and sent - received < _IN_FLIGHT_PER_WORKER * len(self.workers):
                work = {"kind": "work", "n": sent, "sent": time.time(), "reply": self.reply}
                self.layer.send(WORK_CHANNEL, work)
                sent += 1
                continue
            answer = self._next_answer("work")
            arrived = time.time()
            received += 1
            per_worker[answer["worker"]] += 1
            one_way.append(answer["received"] - answer["sent"])
            round_trip.append(arrived - answer["sent"])
            recent.append((now, arrived - answer["sent"]))
            progress.update(_work_line, received, now - started, recent)
        progress.done(_work_line(received, time.monotonic() - started, recent))
        self.results["work"] = {
            "messages": received, "seconds": time.monotonic() - started, "per_worker": per_worker,
            "one_way": one_way, "round_trip": round_trip,
        }

    # -- phase 2: a group of process-specific channels ------------------------

    def run_group(self) -> None:
        members = [f"demo.worker{i % len(self.workers)}!member{i}" for i in range(self.args.members)]
        for member in members:
            self.layer.group_add(GROUP, member)
        self.say(f"\ngroup: {GROUP!r} has {len(self.layer.group_channels(GROUP))} members "
                 f"(process-specific channels of the {len(self.workers)} workers); "
                 f"broadcasting {self.args.broadcasts} messages")
        send_times, fan_out, heard = [], [], set()
        progress = Progress(self)
        for number in range(self.args.broadcasts):
            started = time.time()
            broadcast = {"kind": "broadcast", "n": number, "sent": started, "reply": self.reply}
            self.layer.send_group(GROUP, broadcast)
            send_times.append(time.time() - started)
            for _ in members:
                answer = self._next_answer("broadcast")
                heard.add((answer["member"], answer["n"]))
            fan_out.append(time.time() - started)
            progress.update(_group_line, number + 1, self.args.broadcasts, len(members), send_times, fan_out,
                            force=True)
        progress.done(_group_line(self.args.broadcasts, self.args.broadcasts, len(members), send_times, fan_out))
        self.results["group"] = {
            "members": len(members), "broadcasts": self.args.broadcasts, "delivered": len(heard),
            "send_group": send_times, "fan_out": fan_out,
        }

    def _next_answer(self, kind: str) -> Dict[str, Any]:
        deadline = time.monotonic() + _REPLY_TIMEOUT
        while time.monotonic() < deadline:
            _, message = self.layer.receive([self.reply], block=True)
            if message is not None and message.get("kind") == kind:
                return message
            dead = [p.name for p in self.workers if p.exitcode is not None]
            if dead:
                raise CommandError(f"demo worker stopped unexpectedly: {', '.join(dead)}")
        raise CommandError(f"no answer from the workers within {_REPLY_TIMEOUT:.0f} s")

    # -- output ------------------------------------------------------------------

    def summary(self) -> bool:
        work, group = self.results["work"], self.results["group"]
        expected = group["members"] * group["broadcasts"]
        totals = self.layer.global_statistics()
        split = " / ".join(f"{count:,}" for count in work["per_worker"])
        rate = work["messages"] / max(work["seconds"], 1e-6)
        self.say("\nsummary")
        self.say(f"  work channel:  {work['messages']:,} messages answered by {len(work['per_worker'])} "
                 f"workers ({split}), {rate:,.0f} messages/s")
        self.say(f"  latency:       send to worker p50 {_ms(work['one_way'], 50)} "
                 f"p99 {_ms(work['one_way'], 99)}; "
                 f"reply back on the '?' channel p50 {_ms(work['round_trip'], 50)} "
                 f"p99 {_ms(work['round_trip'], 99)}")
        self.say(f"  group:         {group['broadcasts']} broadcasts x {group['members']} members: "
                 f"{group['delivered']:,}/{expected:,} delivered; "
                 f"send_group p50 {_ms(group['send_group'], 50)}, "
                 f"every member answered p50 {_ms(group['fan_out'], 50)}")
        self.say(f"  layer statistics: messages_count {totals['messages_count']:,}, "
                 f"channel_full_count {totals['channel_full_count']:,}")
        return group["delivered"] == expected

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class Progress:
    """One status line: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, demo: Demo):
        self.demo = demo
        self.interval = 0.2 if demo.live else 1.0
        self.last = time.monotonic()

    def update(self, render: Any, *arguments: Any, force: bool = False) -> None:
        """Show ``render(*arguments)`` if it is time to (rendering is skipped otherwise)."""
        now = time.monotonic()
        if now - self.last < self.interval and not (force and self.demo.live):
            return
        self.last = now
        self._show(render(*arguments))

    def done(self, text: str) -> None:
        self._show(text)
        if self.demo.live:
            self.demo.out.write("\n")
            self.demo.out.flush()

    def _show(self, text: str) -> None:
        if self.demo.live:
            self.demo.out.write("\r\033[K  " + text)
            self.demo.out.flush()
        else:
            self.demo.say("  " + text)


def _work_line(received: int, elapsed: float, recent: List[Any]) -> str:
    cutoff = time.monotonic() - 1.0
    while recent and recent[0][0] < cutoff:
        recent.pop(0)
    latencies = [latency for _, latency in recent]
    return (f"{elapsed:4.1f} s  {received:,} answered  {len(latencies):,} messages/s  "
            f"round trip p50 {_ms(latencies, 50)} p99 {_ms(latencies, 99)}")


def _group_line(done: int, total: int, members: int, send_times: List[float], fan_out: List[float]) -> str:
    return (f"broadcast {done}/{total}  {done * members:,} deliveries  send_group p50 {_ms(send_times, 50)}  "
            f"all {members} answered p50 {_ms(fan_out, 50)}")


def _ms(values: List[float], percent: float) -> str:
    value = percentile(values, percent)
    return "-" if value is None else f"{value * 1000:.2f} ms"


def run(args: argparse.Namespace) -> int:
    cleanup_on_sigterm()
    with ExitStack() as cleanup:
        if has_location(args):
            backend, config = layer_config(args)
            where = "the configured Redis"
        else:
            server = EmbeddedRedis()
            cleanup.callback(server.close)
            backend, config = RedisChannelLayer, {"hosts": [server.url]}
            where = f"embedded {server.describe()} at {server.url} (pid {server.pid}, {server.binary})"
        tag = secrets.token_hex(3)
        # its own prefixes, so the demo can remove all it wrote and nothing else
        own = {"prefix": f"asgi-demo-{tag}:", "stats_prefix": f"asgi-demo-meta-{tag}:",
               "capacity": max(1000, args.members * 2)}
        config = finish_config(config, own)
        try:
            demo = Demo(backend, config, args)
        except (TypeError, ValueError) as error:
            raise CommandError(f"bad layer configuration: {error}", 2) from None
        cleanup.callback(demo.layer.close)
        cleanup.callback(_quietly, demo.layer.flush)
        demo.say(f"asgi_redis demo on {where}, prefix {config['prefix']!r}")
        cleanup.callback(demo.stop_workers)
        demo.start_workers()
        demo.run_work()
        demo.run_group()
        complete = demo.summary()
    print("stopped the workers" + ("" if has_location(args) else " and the embedded server")
          + ", removed the demo's keys", flush=True)
    return 0 if complete else 1


def _quietly(action: Any) -> None:
    # cleanup after a failure must not hide the failure itself
    try:
        action()
    except Exception:
        pass


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text}")
    return value


def _count(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value
    return parse
