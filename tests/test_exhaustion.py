"""When connections run out although every server is up.

* Descriptor exhaustion: the test process lowers its own soft RLIMIT_NOFILE
  (never the hard one, never system-wide), then opens /dev/null until the
  kernel says EMFILE, so it really holds 1,500+ descriptors and has none
  left. Every call that needs a new connection must fail with a
  LayerConnectionError naming the limit; nothing may be half-written in
  Redis or delivered twice; and the layer must work again as soon as a few
  descriptors are free, without being rebuilt.
* ``maxclients``: a server that refuses connections, then accepts again.
* The pool's own ``max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from asgi_redis import LayerConnectionError, RedisChannelLayer, RedisLocalChannelLayer, RedisSentinelChannelLayer

from .servers import serving

HELD_AT_LEAST = 1500  # descriptors the exhausted process really holds
SOFT_LIMIT = 1600
PREFIX = "exhaustion:"  # layers on the session's shared server keep to their own keys
POOL_SIZE = 10
FAILING_CALLS = 15  # more than the pool's max_connections


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class Exhausted:
    """This process with no descriptor left: ``release(n)`` frees ``n`` of them."""

    def __init__(self, held):
        self.held = held

    def release(self, count=None):
        count = len(self.held) if count is None else count
        for _ in range(min(count, len(self.held))):
            os.close(self.held.pop())


@contextlib.contextmanager
def descriptors_exhausted(soft_limit=SOFT_LIMIT):
    """Lower this process's soft RLIMIT_NOFILE, then take every descriptor left under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(soft_limit, open_descriptors() + HELD_AT_LEAST + 10)
    if hard != resource.RLIM_INFINITY and limit > hard:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is below the {limit} descriptors this test holds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    held = []
    try:
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as error:
            assert error.errno == errno.EMFILE, error
        assert len(held) >= HELD_AT_LEAST
        yield Exhausted(held)
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def assert_names_the_limit(error):
    text = str(error)
    assert "file descriptors" in text and "EMFILE" in text and "RLIMIT_NOFILE" in text, text
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert str(soft) in text, text


def layer_keys(*servers, prefix=b"asgi:"):
    """Every message-layer key on the servers (statistics live under another prefix)."""
    keys = set()
    for server in servers:
        client = server.client()
        keys |= {key for key in client.keys("*") if key.startswith(prefix)}
        client.close()
    return keys


@pytest.fixture
def unix_server():
    yield from serving(unix_socket=True)


@pytest.fixture
def crowded_server():
    """A server that accepts only a handful of clients."""
    yield from serving(extra_config=["maxclients 4"])


@pytest.fixture
def sentinel_of(redis_server):
    """One sentinel monitoring the session server as service ``svc``."""
    yield from serving(sentinel=True, extra_config=[f"sentinel monitor svc 127.0.0.1 {redis_server.port} 1"])


@pytest.fixture
def two_shard_layer(redis_shards):
    layers = []

    def build(**config):
        layer = RedisChannelLayer(hosts=[server.url for server in redis_shards], expiry=5, **config)
        layer.flush()
        layers.append(layer)
        return layer

    yield build
    for layer in layers:
        layer.flush()
        layer.close()


def names_per_shard(layer, pattern):
    """One ``pattern``-named channel on each shard of ``layer``."""
    found = {}
    for number in range(1000):
        name = pattern.format(number)
        found.setdefault(layer.shard_for(name), name)
        if len(found) == len(layer.shards):
            return [found[index] for index in range(len(layer.shards))]
    raise AssertionError("no name for every shard")


# -- EMFILE, plain layer over two shards --------------------------------------------


CALLS = {
    "send": lambda layer: layer.send("ex.normal", {"n": 1}),
    "send_directed": lambda layer: layer.send("ex.reply?abc", {"n": 1}),
    "receive": lambda layer: layer.receive(["ex.normal"]),
    "receive_block_one_shard": lambda layer: layer.receive(["ex.reply?abc"], block=True),
    "receive_block_all_shards": lambda layer: layer.receive(["ex.normal", "ex.reply?abc"], block=True),
    "send_group": lambda layer: layer.send_group("ex.group", {"n": 1}),
    "group_add": lambda layer: layer.group_add("ex.group", "ex.member?x"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_cold_layer_out_of_descriptors_fails_clearly_and_recovers(two_shard_layer, redis_shards, call):
    layer = two_shard_layer()
    layer.blpop_timeout = 0.2
    for member in names_per_shard(layer, "ex.member?{}"):  # send_group writes on both shards
        layer.group_add("ex.group", member)
    before = layer_keys(*redis_shards)
    layer.close()  # no pooled connection: each call needs a new one
    with descriptors_exhausted() as exhausted:
        with pytest.raises(LayerConnectionError) as raised:
            CALLS[call](layer)
        assert_names_the_limit(raised.value)
        exhausted.release(16)  # a few descriptors free: enough, at once, no restart
        layer.send("ex.after", {"n": 2})
        assert layer.receive(["ex.after"]) == ("ex.after", {"n": 2})
    assert layer_keys(*redis_shards) == before, "a failed call left something in Redis"


def test_many_failed_connects_do_not_use_up_the_pool(redis_shards):
    """redis-py 8 counted a connection whose constructor failed under EMFILE; after
    max_connections (100) such calls the pool refused everything, for good. A layer
    never used yet has no connection object to reuse: each call builds one."""
    layer = RedisChannelLayer(hosts=[server.url for server in redis_shards], expiry=5,
                              connection_kwargs={"max_connections": POOL_SIZE})
    with descriptors_exhausted() as exhausted:
        for _ in range(FAILING_CALLS):
            with pytest.raises(LayerConnectionError) as raised:
                layer.send("ex.reply?abc", {"n": 1})
            assert_names_the_limit(raised.value)
        exhausted.release()
    layer.send("ex.reply?abc", {"n": 2})
    assert layer.receive(["ex.reply?abc"]) == ("ex.reply?abc", {"n": 2})
    pool = layer.shards.client(layer.shard_for("ex.reply?abc")).connection_pool
    assert len(pool._in_use_connections) == 0
    layer.flush()
    layer.close()


def test_waiting_messages_are_delivered_once_across_exhaustion(two_shard_layer, redis_shards):
    """Messages queued before are neither lost nor doubled by calls that failed meanwhile."""
    layer = two_shard_layer()
    channels = names_per_shard(layer, "ex.once?{}")
    for channel in channels:
        for n in range(3):
            layer.send(channel, {"n": n})
    layer.close()
    with descriptors_exhausted() as exhausted:
        for _ in range(5):
            for block in (False, True):
                with pytest.raises(LayerConnectionError) as raised:
                    layer.receive(channels, block=block)
                assert_names_the_limit(raised.value)
        with pytest.raises(LayerConnectionError):
            layer.send(channels[0], {"n": "never"})
        exhausted.release()
    received = []
    while True:
        channel, message = layer.receive(channels)
        if channel is None:
            break
        received.append((channel, message["n"]))
    assert sorted(received) == sorted((channel, n) for channel in channels for n in range(3))


def test_warm_layer_uses_its_connections_and_waits_fail_or_end_cleanly(two_shard_layer, redis_shards):
    """Pooled connections still work without new descriptors; a wait over both shards
    (which cancels on a second connection per shard) returns or fails clearly, and
    every queued message arrives exactly once."""
    layer = two_shard_layer()
    layer.blpop_timeout = 0.2
    channels = names_per_shard(layer, "ex.warm?{}")
    layer.receive(channels, block=True)  # one pooled connection per shard
    for channel in channels:
        layer.send(channel, {"on": channel})
    received = []
    with descriptors_exhausted() as exhausted:
        for _ in range(len(channels)):
            received.append(layer.receive(channels))  # the pooled connections serve these
        for _ in range(3):
            try:
                assert layer.receive(channels, block=True) == (None, None)
            except LayerConnectionError as error:
                assert_names_the_limit(error)
        exhausted.release(16)
        layer.send(channels[1], {"on": "after"})
        received.append(layer.receive(channels, block=True))
    expected = [(c, {"on": c}) for c in channels] + [(channels[1], {"on": "after"})]
    assert sorted(received, key=repr) == sorted(expected, key=repr)
    assert layer.receive(channels) == (None, None)
    assert layer_keys(*redis_shards) == set()


def test_message_arriving_during_an_exhausted_wait_is_not_lost(two_shard_layer, redis_shards):
    """A wait on both shards whose cancel cannot open a connection: the message that
    woke it is still delivered (the other shard's wait is ended by closing its socket)."""
    layer = two_shard_layer()
    layer.blpop_timeout = 60  # ended by the message, not by a clock
    channels = names_per_shard(layer, "ex.wake?{}")
    sender = two_shard_layer()
    for index in range(len(channels)):  # one pooled connection per shard, in both layers
        layer.shards.client(index).ping()
        sender.shards.client(index).ping()
    results = []
    looking = watchers(redis_shards)
    with descriptors_exhausted():
        thread = threading.Thread(target=lambda: results.append(_receive_or_error(layer, channels)))
        thread.start()
        _wait_for_blocked_clients(looking, 1)
        sender.send(channels[1], {"woke": True})  # on its pooled connection: no descriptor needed
        thread.join(30)
    assert results == [(channels[1], {"woke": True})], results
    assert layer.receive(channels) == (None, None)
    assert layer_keys(*redis_shards) == set()
    for client in looking:
        client.close()


def _receive_or_error(layer, channels):
    try:
        return layer.receive(channels, block=True)
    except LayerConnectionError as error:
        return error


def _wait_for_blocked_clients(clients, count, timeout=30):
    """Until every server (through ``clients``, connected beforehand) has ``count`` clients in BLPOP."""
    deadline = time.monotonic() + timeout
    while not all(client.info("clients")["blocked_clients"] >= count for client in clients):
        assert time.monotonic() < deadline, "the receive never blocked"
        time.sleep(0.01)


def watchers(servers):
    """Connected clients for looking at the servers while this process has no descriptor left."""
    clients = [server.client() for server in servers]
    for client in clients:
        client.ping()
    return clients


def test_asyncio_receive_out_of_descriptors_fails_clearly_and_recovers(redis_server):
    layer = RedisChannelLayer(hosts=[redis_server.url], expiry=5)
    layer.extension_receive_timeout = 0.2
    loop = asyncio.new_event_loop()  # a loop needs descriptors of its own: made before
    try:
        with descriptors_exhausted() as exhausted:
            for channels in (["ex.async?a"], ["ex.async!"]):
                with pytest.raises(LayerConnectionError) as raised:
                    loop.run_until_complete(layer.receive_async(channels))
                assert_names_the_limit(raised.value)
            exhausted.release(16)
            layer.send("ex.async?a", {"n": 1})
            assert loop.run_until_complete(layer.receive_async(["ex.async?a"])) == ("ex.async?a", {"n": 1})
        loop.run_until_complete(layer.close_async())
    finally:
        loop.close()
        layer.flush()
        layer.close()


def test_local_layer_out_of_descriptors_fails_clearly_and_recovers(redis_server, unix_server):
    remote, local = redis_server, unix_server
    layer = RedisLocalChannelLayer(hosts=[remote.url], local_hosts=[f"unix://{local.unix_socket}"], expiry=5,
                                   prefix=PREFIX)
    layer.blpop_timeout = 0.2
    try:
        with descriptors_exhausted() as exhausted:
            for call in (
                lambda: layer.send("ex.local", {"n": 1}),  # unix socket to the local server
                lambda: layer.send("ex.remote?x", {"n": 1}),
                lambda: layer.receive(["ex.local", "ex.remote?x"], block=True),
            ):
                with pytest.raises(LayerConnectionError) as raised:
                    call()
                assert_names_the_limit(raised.value)
            exhausted.release(16)
            layer.send("ex.local", {"n": 2})
            layer.send("ex.remote?x", {"n": 3})
            got = [layer.receive(["ex.local", "ex.remote?x"], block=True) for _ in range(2)]
        assert sorted(got, key=str) == sorted([("ex.local", {"n": 2}), ("ex.remote?x", {"n": 3})], key=str)
        assert layer_keys(remote, local, prefix=PREFIX.encode()) == set()
    finally:
        layer.flush()
        layer.close()


TWISTED_CHILD = textwrap.dedent("""
    import errno, json, os, resource, sys, threading
    from twisted.internet import reactor, threads
    from asgi_redis import LayerConnectionError, RedisChannelLayer

    layer = RedisChannelLayer(hosts=sys.argv[1:], expiry=5)
    layer.extension_receive_timeout = 0.2
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1600, hard))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as error:
        assert error.errno == errno.EMFILE
    report = {"held": len(held), "errors": []}
    for channels in (["tw.one?a"], ["tw.normal"]):  # one shard; then both (the pool's wait)
        try:
            report["errors"].append(["returned", repr(
                threads.blockingCallFromThread(reactor, layer.receive_twisted, channels))])
        except LayerConnectionError as error:
            report["errors"].append(["LayerConnectionError", str(error)])
        except Exception as error:
            report["errors"].append([type(error).__name__, str(error)])
    for descriptor in held[:16]:
        os.close(descriptor)
    layer.send("tw.normal", {"n": 1})
    report["after"] = repr(threads.blockingCallFromThread(reactor, layer.receive_twisted, ["tw.normal"]))
    reactor.callFromThread(reactor.stop)
    thread.join(10)
    print(json.dumps(report))
""")


def test_twisted_receive_out_of_descriptors_fails_clearly_and_recovers(redis_shards):
    """In a child process: the Twisted reactor is one per process (test_extensions has it)."""
    pytest.importorskip("twisted")
    done = subprocess.run(
        [sys.executable, "-c", TWISTED_CHILD, *[server.url for server in redis_shards]],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["held"] >= HELD_AT_LEAST
    for kind, text in report["errors"]:
        assert kind == "LayerConnectionError", (kind, text)
        assert "EMFILE" in text and "RLIMIT_NOFILE" in text and "1600" in text, text
    assert report["after"] == repr(("tw.normal", {"n": 1}))
    RedisChannelLayer(hosts=[server.url for server in redis_shards]).flush()


# -- maxclients ----------------------------------------------------------------------


def test_server_at_maxclients_refuses_clearly_then_recovers(crowded_server):
    server = crowded_server
    layer = RedisChannelLayer(hosts=[server.url], expiry=5)
    layer.blpop_timeout = 0.2
    others = []
    try:
        while True:  # take every client slot the server has
            other = server.client()
            try:
                other.ping()
            except redis.ConnectionError:
                other.close()
                break
            others.append(other)
        assert others, "the server accepted nobody"
        for call in (
            lambda: layer.send("mc.a?x", {"n": 1}),
            lambda: layer.receive(["mc.a?x"]),
            lambda: layer.receive(["mc.a?x"], block=True),
            lambda: layer.send_group("mc.group", {"n": 1}),
        ):
            with pytest.raises(LayerConnectionError) as raised:
                call()
            text = str(raised.value)
            assert "maxclients" in text and server.url in text, text
        others.pop().close()  # one slot free
        layer.send("mc.a?x", {"n": 2})
        assert layer.receive(["mc.a?x"]) == ("mc.a?x", {"n": 2})
        for other in others:
            other.close()
        assert layer_keys(server) == set()
    finally:
        for other in others:
            other.close()
        layer.close()


# -- the pool's max_connections -------------------------------------------------------


def test_full_pool_says_so(redis_server):
    layer = RedisChannelLayer(hosts=[redis_server.url], expiry=5, connection_kwargs={"max_connections": 2})
    layer.blpop_timeout = 60  # the waits end when woken below, not by a clock
    results = []
    waiting = [
        threading.Thread(target=lambda n=n: results.append(layer.receive([f"pool.wait?{n}"], True)))
        for n in range(2)
    ]
    for thread in waiting:
        thread.start()
    looking = watchers([redis_server])
    waker = RedisChannelLayer(hosts=[redis_server.url], expiry=5)
    try:
        _wait_for_blocked_clients(looking, 2)
        with pytest.raises(LayerConnectionError) as raised:
            layer.send("pool.other?x", {"n": 1})
        text = str(raised.value)
        assert "max_connections=2" in text and "in use" in text, text
    finally:
        for n in range(2):
            waker.send(f"pool.wait?{n}", {"wake": n})
        for thread in waiting:
            thread.join(30)
        waker.close()
        looking[0].close()
    assert sorted(results, key=repr) == [(f"pool.wait?{n}", {"wake": n}) for n in range(2)]
    layer.send("pool.other?x", {"n": 1})
    assert layer.receive(["pool.other?x"]) == ("pool.other?x", {"n": 1})
    layer.close()


def test_sentinel_layer_out_of_descriptors_fails_clearly_and_recovers(redis_server, sentinel_of):
    """Asking a sentinel for the master needs a connection too: both say which limit."""
    master, sentinel = redis_server, sentinel_of
    layer = None
    try:
        layer = RedisSentinelChannelLayer(hosts=[sentinel.address], services=["svc"], expiry=5, prefix=PREFIX)
        layer.blpop_timeout = 0.2
        for warm in (False, True):  # no connection yet; then the master known, its pool closed
            if warm:
                layer.send("sn.warm?x", {"n": 0})
                assert layer.receive(["sn.warm?x"]) == ("sn.warm?x", {"n": 0})
                layer.close()
            with descriptors_exhausted() as exhausted:
                for call in (
                    lambda: layer.send("sn.a?x", {"n": 1}),
                    lambda: layer.receive(["sn.a?x"], block=True),
                ):
                    with pytest.raises(LayerConnectionError) as raised:
                        call()
                    assert_names_the_limit(raised.value)
                exhausted.release(16)
                layer.send("sn.a?x", {"n": 2})
                assert layer.receive(["sn.a?x"]) == ("sn.a?x", {"n": 2})
        assert layer_keys(master, prefix=PREFIX.encode()) == set()
    finally:
        if layer is not None:
            layer.flush()
            layer.close()
