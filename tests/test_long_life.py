"""Long life: one layer object over many messages, threads, loops and a Redis restart.

Waves of fresh threads (each wave's threads end before the next starts) send
and receive through ONE layer over two shards: normal channels (spread over
both shards; their blocking receive waits on both servers at once), ``?``
reply channels with a new name each time (as daphne makes them), ``!``
process channels, groups, blocking receives that time out, and a thread per
wave running its own asyncio loop (``asyncio.run``) for ``receive_async``.
One shard is restarted once, in the middle of a wave.

Measured at the start (after the first wave), the middle and the end, and
sampled all along: the connections the layer holds on each server (CLIENT
LIST, by the client name the layer's connections carry), the pools' own
counts, this process's descriptors (/proc/self/fd) and its memory (RSS and
tracemalloc). The bounds asserted:

* connections per shard, at every sample, at most the threads using the
  layer at once plus the receive waits in flight (each thread can be in at
  most one wait, which holds a second connection per shard for its cancel);
* descriptors at the end no more than at the start plus that same bound;
* memory growth from start to end a few MB at most;
* nothing delivered twice, nothing unknown delivered, and nothing lost
  except by the restart (at most one message per thread then).

``test_long_life_short`` (tens of thousands of messages) runs in the normal
suite; ``test_long_life_soak`` (over 1,000,000) with ``--soak``. Figures are
printed (``-s``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
import time
import tracemalloc

import pytest

from asgi_redis import LayerConnectionError, RedisChannelLayer, loop_scope

from .servers import RedisProcess

CLIENT_NAME = "asgi-long-life"
THREADS = 4  # sync worker threads per wave
USERS = THREADS + 1  # plus the wave's asyncio thread: threads using the layer at once
CONNECTION_BOUND = USERS + USERS  # threads at once + receive waits in flight (one per thread at most)
RSS_GROWTH_LIMIT = 6 * 1024 * 1024
WAVE_RETAINED_LIMIT = 256 * 1024  # allocated during one wave and still alive after it
PAGE = resource.getpagesize()


class Figures:
    """Connections, descriptors and memory of this process and its layer."""

    def __init__(self, layer, servers):
        self.layer = layer
        self.servers = servers
        self.watchers = [server.client() for server in servers]
        self.points = {}
        self.peak_connections = [0] * len(servers)
        self.peak_pool = [0] * len(servers)
        self.samples = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_all_along, daemon=True)

    def server_connections(self):
        counts = []
        for watcher in self.watchers:
            try:
                clients = watcher.client_list()
            except Exception:  # the shard being restarted
                counts.append(0)
                continue
            counts.append(sum(1 for client in clients if client.get("name") == CLIENT_NAME))
        return counts

    def pool_counts(self):
        counts = []
        for index in range(len(self.layer.shards)):
            pool = self.layer.shards.client(index).connection_pool
            counts.append({
                "created": pool._created_connections,
                "idle": len(pool._available_connections),
                "in_use": len(pool._in_use_connections),
            })
        return counts

    def _sample_all_along(self):
        while not self._stop.wait(0.05):
            for index, count in enumerate(self.server_connections()):
                self.peak_connections[index] = max(self.peak_connections[index], count)
            for index, pool in enumerate(self.pool_counts()):
                self.peak_pool[index] = max(self.peak_pool[index], pool["created"])
            self.samples += 1

    def start_sampling(self):
        self._sampler.start()

    def stop(self):
        self._stop.set()
        self._sampler.join(10)
        for watcher in self.watchers:
            watcher.close()

    def take(self, label, messages):
        gc.collect()
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE
        self.points[label] = {
            "messages": messages,
            "connections_per_shard": self.server_connections(),
            "pools": self.pool_counts(),
            "descriptors": len(os.listdir("/proc/self/fd")),
            "rss_mb": round(rss / 2**20, 2),
            "threads": threading.active_count(),
        }
        return self.points[label]


class Books:
    """Per-thread record of what was sent, received and left uncertain by an error."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = 0
        self.errors = 0
        self.duplicates = []
        self.unknown = []
        self.lost = 0
        self.timeouts = 0
        self.async_receives = 0
        self.failures = []  # anything a thread raised that is not a LayerConnectionError

    def add(self, **counts):
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def worker(layer, books, wave, number, count, stop):
    """``count`` messages, each sent and received back by this thread."""
    me = f"w{wave}.{number}"
    normal = f"ll.normal.{me}"
    process = f"ll.proc.{me}!"
    group = f"ll.group.{me}"
    member = f"ll.member.{me}?g"
    idle = ["ll.idle", "ll.idle.reply?none"]  # nothing ever arrives: a wait on both shards times out
    received, uncertain = set(), set()
    done = errors = lost = timeouts = 0
    for seq in range(count):
        if stop.is_set():
            break
        kind = seq % 10
        try:
            if kind == 0:
                layer.group_add(group, member)  # again each time: a restarted shard forgot it
                layer.send_group(group, {"me": me, "seq": seq})
                channels, block = [member], False
            elif kind in (1, 2, 3):
                layer.send(normal, {"me": me, "seq": seq})
                channels, block = [normal], True  # found by the sweep of both shards
            elif kind in (4, 5):
                channels, block = [process], False
                layer.send(process + "x", {"me": me, "seq": seq})
            else:
                reply = layer.new_channel(f"ll.reply.{me}?") if kind == 9 else f"ll.reply.{me}.{seq}?s"
                layer.send(reply, {"me": me, "seq": seq})
                channels, block = [reply], False
            if seq % 100 == 7:
                assert layer.receive(idle, block=True) == (None, None)
                timeouts += 1
            while True:
                channel, message = layer.receive(channels, block=block)
                if channel is None:
                    lost += 1  # only a restart may have taken it: checked in the books
                    break
                got = message["seq"]
                if message.get("me") != me:
                    books.add(unknown=[(me, message)])
                elif got in received:
                    books.add(duplicates=[(me, got)])
                received.add(got)
                if got == seq:
                    break
                if got not in uncertain:
                    books.add(unknown=[(me, message)])
            done += 1
        except LayerConnectionError:
            errors += 1
            uncertain.add(seq)
            time.sleep(0.02)
    with_leftovers = [layer.receive([normal, process, member]) for _ in range(3)]
    for channel, message in with_leftovers:
        if channel is not None and (message.get("me") != me or message["seq"] not in uncertain):
            books.add(unknown=[(me, message)])
    try:
        layer.group_discard(group, member)
    except LayerConnectionError:
        pass
    books.add(messages=done, errors=errors, lost=lost, timeouts=timeouts)


def async_worker(layer, books, wave, count):
    """A thread with its own loop, as asgiref or a test runner makes one per call or thread."""

    async def run():
        channel = f"ll.async.{wave}?a"
        uncertain = set()
        for seq in range(count):
            try:
                layer.send(channel, {"seq": seq})
                while True:
                    got_channel, message = await layer.receive_async([channel])
                    if got_channel is None:
                        books.add(lost=1)
                    elif message["seq"] != seq:
                        if message["seq"] not in uncertain:
                            books.add(unknown=[("async", message)])
                        continue
                    break
                books.add(async_receives=1, messages=1)
            except LayerConnectionError:
                uncertain.add(seq)
                books.add(errors=1)
        assert await layer.receive_async(["ll.async.idle?x"]) == (None, None)
        books.add(async_receives=1, timeouts=1)

    asyncio.run(run())


def recorded(books, target, *args):
    """Run ``target``; whatever it raises ends up in the books, not lost in a thread."""
    try:
        target(*args)
    except BaseException as error:  # noqa: BLE001 - reported by the test thread
        books.add(failures=[repr(error)])


def run_long_life(total, per_thread):
    servers = [RedisProcess(), RedisProcess()]
    layer = RedisChannelLayer(
        hosts=[server.url for server in servers], expiry=10, group_expiry=60,
        connection_kwargs={"client_name": CLIENT_NAME},
    )
    layer.blpop_timeout = 0.05
    layer.extension_receive_timeout = 0.05
    figures = Figures(layer, servers)
    books = Books()
    stop = threading.Event()
    wave_messages = THREADS * per_thread + per_thread // 10
    waves = max(5, -(-total // wave_messages))
    restart_wave = waves // 2
    # measured after these waves, each traced by tracemalloc while it runs (tracing the
    # whole run would triple its cost): what a wave leaves allocated is what leaks
    points = {1: "start", restart_wave + 1: "middle", waves - 1: "end"}
    started = time.monotonic()
    try:
        figures.start_sampling()
        for wave in range(waves):
            threads = [
                threading.Thread(target=recorded, args=(books, worker, layer, books, wave, number, per_thread, stop))
                for number in range(THREADS)
            ]
            threads.append(threading.Thread(
                target=recorded, args=(books, async_worker, layer, books, wave, per_thread // 10)))
            if wave in points:
                gc.collect()
                tracemalloc.start()
                traced_before = tracemalloc.get_traced_memory()[0]
            for thread in threads:
                thread.start()
            if wave == restart_wave:
                time.sleep(0.2)  # in the middle of the wave's traffic
                servers[1].restart()
            for thread in threads:
                thread.join(600)
                assert not thread.is_alive(), "a worker hung"
            if wave in points:
                point = figures.take(points[wave], books.messages)
                point["wave_retained_kb"] = round((tracemalloc.get_traced_memory()[0] - traced_before) / 1024, 1)
                tracemalloc.stop()
    finally:
        stop.set()
        figures.stop()
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    elapsed = time.monotonic() - started
    try:
        keys_left = [
            key for server in servers for key in server.client().keys("asgi:*")
        ]
        layer.flush()
    finally:
        layer.close()
        for server in servers:
            server.close()
    return {
        "points": figures.points,
        "peak_connections_per_shard": figures.peak_connections,
        "peak_pool_created_per_shard": figures.peak_pool,
        "samples": figures.samples,
        "messages": books.messages,
        "async_receives": books.async_receives,
        "timed_out_waits": books.timeouts,
        "errors": books.errors,
        "lost_by_restart": books.lost,
        "duplicates": books.duplicates,
        "failures": books.failures,
        "unknown": books.unknown,
        "keys_left": keys_left,
        "waves": waves,
        "messages_per_wave": wave_messages,
        "seconds": round(elapsed, 1),
    }


def check_bounds(result, total):
    points = result["points"]
    start, middle, end = points["start"], points["middle"], points["end"]
    assert result["failures"] == [], result["failures"][:10]
    assert result["messages"] >= total * 0.95, result
    assert result["duplicates"] == [], result["duplicates"][:10]
    assert result["unknown"] == [], result["unknown"][:10]
    assert result["lost_by_restart"] <= USERS, result  # one in flight per thread at the restart
    assert result["timed_out_waits"] > 0 and result["async_receives"] > 0
    assert result["samples"] > 0
    for index, peak in enumerate(result["peak_connections_per_shard"]):
        assert peak <= CONNECTION_BOUND, (index, peak, result)
    for index, peak in enumerate(result["peak_pool_created_per_shard"]):
        assert peak <= CONNECTION_BOUND, (index, peak, result)
    for point in (start, middle, end):
        assert all(count <= CONNECTION_BOUND for count in point["connections_per_shard"]), point
        assert all(pool["in_use"] == 0 for pool in point["pools"]), point  # between waves
    assert end["descriptors"] <= start["descriptors"] + CONNECTION_BOUND, (start, end)
    assert (end["rss_mb"] - start["rss_mb"]) * 2**20 <= RSS_GROWTH_LIMIT, (start, end)
    for point in (start, middle, end):
        assert point["wave_retained_kb"] * 1024 <= WAVE_RETAINED_LIMIT, point


def report(label, result):
    print(f"\n{label}: {result['messages']} messages in {result['seconds']} s, {result['waves']} waves")
    for name in ("start", "middle", "end"):
        print(f"  {name}: {result['points'][name]}")
    rest = {k: v for k, v in result.items() if k != "points"}
    print(f"  {rest}")


def test_long_life_short():
    total = 20_000
    result = run_long_life(total, per_thread=400)
    report("long life (short)", result)
    check_bounds(result, total)


@pytest.mark.soak
def test_long_life_soak():
    total = 1_000_000
    result = run_long_life(total, per_thread=2_500)
    report("long life (soak)", result)
    check_bounds(result, total)


def descriptor_targets():
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # the listing's own descriptor, closed already
            pass
    return targets


def test_a_loop_per_thread_leaves_no_connection_behind(redis_server):
    """receive_async opens redis.asyncio connections on the running loop; they are
    closed with that loop, not kept (with their descriptors) for the layer's life."""
    layer = RedisChannelLayer(hosts=[redis_server.url], expiry=5, connection_kwargs={"client_name": CLIENT_NAME})
    layer.extension_receive_timeout = 0.01
    watcher = redis_server.client()

    def named():
        # a connection the client closed a moment ago may still be listed until the
        # server reads the close: look again for a short while before counting
        deadline = time.monotonic() + 2
        while True:
            count = sum(1 for client in watcher.client_list() if client.get("name") == CLIENT_NAME)
            if count <= 1 or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    async def receive_once(n):
        layer.send(f"loops?{n}", {"n": n})
        assert await layer.receive_async([f"loops?{n}"]) == (f"loops?{n}", {"n": n})

    try:
        layer.send("loops?warm", {})  # the sync pool's one connection
        watcher.ping()
        before, before_targets = len(os.listdir("/proc/self/fd")), descriptor_targets()
        for n in range(20):
            thread = threading.Thread(target=asyncio.run, args=(receive_once(n),))
            thread.start()
            thread.join(60)
        assert named() <= 1, named()
        assert len(os.listdir("/proc/self/fd")) <= before, sorted(set(descriptor_targets()) - set(before_targets))
        assert len(layer._async_clients_by_loop) == 0

        async def close_and_receive_again():
            for n in range(5):
                await receive_once(100 + n)
                await layer.close_async()
            # one closer per layer and loop, however often the user closed in between
            assert loop_scope.pending_closers(asyncio.get_running_loop()).count(layer.close_async) <= 1

        asyncio.run(close_and_receive_again())
        assert named() <= 1, named()
    finally:
        watcher.close()
        layer.flush()
        layer.close()
