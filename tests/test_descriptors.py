"""Blocking receives spanning several servers in a process holding thousands of descriptors.

``select.select`` refuses descriptors above 1,023 ("filedescriptor out of
range in select()"); daphne with many WebSockets open gets there. Each test
holds 1,500 descriptors first (raising this process's soft RLIMIT_NOFILE if
needed, never the system's), so every socket the layer opens afterwards has
a number above 1,023, then waits on two servers at once in every path that
does so: blocking, a mixed ``!`` + normal receive, asyncio, Twisted, local mode,
and the cluster layer over several masters.
"""

import asyncio
import gc
import os
import resource
import subprocess
import sys
import textwrap
import threading

import pytest

from asgi_redis import RedisChannelLayer, RedisClusterChannelLayer, RedisLocalChannelLayer
from asgi_redis.cluster import key_slot

from .helpers import built_layers

HELD = 1500
SELECT_LIMIT = 1024


@pytest.fixture
def many_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HELD + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # this process only
    gc.collect()  # sockets of earlier tests freed now, not under a test (their low numbers would be reused)
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD)]
    assert held[-1] >= SELECT_LIMIT
    try:
        yield
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=["classic", "compact"])
def two_shards(request, redis_shards, many_descriptors):
    made = []

    def build(cls=RedisChannelLayer, **config):
        config.setdefault("hosts", [server.url for server in redis_shards])
        config.setdefault("layout", request.param)
        layer = cls(expiry=2, **config)
        layer.blpop_timeout = 3
        layer.extension_receive_timeout = 3
        layer.flush()
        made.append(layer)
        return layer

    yield build
    for layer in made:
        layer.flush()
        layer.close()


def _high_sockets(layer):
    """Descriptor numbers of the idle pooled connections of every shard client.

    Tests assert the highest is past select()'s limit: one such descriptor in
    the wait is what made select() fail, and a low number freed meanwhile by
    another thread of the test process may be reused for one of the others."""
    numbers = []
    for shard_set in {id(s): s for s in (layer.shards, layer.normal_shards)}.values():
        for client in shard_set.clients():
            for connection in client.connection_pool._available_connections:
                if connection._sock is not None:
                    numbers.append(connection._sock.fileno())
    return numbers


def _send_soon(layer, channel, message, delay=0.1):
    timer = threading.Timer(delay, layer.send, (channel, message))
    timer.start()
    return timer


def test_blocking_receive_over_two_shards(two_shards):
    layer, sender = two_shards(), two_shards()
    for n in range(3):  # normal channels live on both shards: the wait spans both
        timer = _send_soon(sender, "http.request", {"n": n})
        assert layer.receive(["http.request"], block=True) == ("http.request", {"n": n})
        timer.join()
    assert max(_high_sockets(layer)) >= SELECT_LIMIT


def test_mixed_directed_and_normal_receive(two_shards):
    layer, sender = two_shards(), two_shards()
    for target in ("daphne.response.x!a", "http.request", "daphne.response.x!b"):
        timer = _send_soon(sender, target, {"to": target})
        assert layer.receive(["daphne.response.x!", "http.request"], block=True) == (target, {"to": target})
        timer.join()
    assert max(_high_sockets(layer)) >= SELECT_LIMIT


def test_receive_async_over_two_shards(two_shards):
    layer, sender = two_shards(), two_shards()

    async def receive():
        try:
            return await layer.receive_async(["http.request"])
        finally:
            await layer.close_async()

    timer = _send_soon(sender, "http.request", {"async": True})
    assert asyncio.run(receive()) == ("http.request", {"async": True})
    timer.join()
    assert max(_high_sockets(layer)) >= SELECT_LIMIT


def test_local_mode_mixed_receive(redis_shards, two_shards):
    remote, local = redis_shards
    build = lambda: two_shards(RedisLocalChannelLayer, hosts=[remote.url], local_hosts=[local.url])  # noqa: E731
    layer, sender = build(), build()
    for target in ("reply?a", "http.request"):
        timer = _send_soon(sender, target, {"to": target})
        assert layer.receive(["http.request", "reply?a"], block=True) == (target, {"to": target})
        timer.join()
    assert max(_high_sockets(layer)) >= SELECT_LIMIT


_TWISTED_SCRIPT = textwrap.dedent("""
    import os, resource, sys, threading
    from twisted.internet import reactor, threads
    from asgi_redis import RedisChannelLayer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < {wanted}:
        resource.setrlimit(resource.RLIMIT_NOFILE, ({wanted}, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range({held})]
    assert held[-1] >= {limit}
    hosts = sys.argv[1:]
    layer, sender = RedisChannelLayer(hosts=hosts, expiry=2), RedisChannelLayer(hosts=hosts, expiry=2)
    layer.extension_receive_timeout = 3
    layer.flush()
    result = []

    def main():
        try:
            for n in range(2):
                timer = threading.Timer(0.1, sender.send, ("http.request", {{"n": n}}))
                timer.start()
                result.append(threads.blockingCallFromThread(reactor, layer.receive_twisted, ["http.request"]))
                timer.join()
        except BaseException as error:
            result.append(repr(error))
        finally:
            reactor.callFromThread(reactor.stop)

    threading.Thread(target=main, daemon=True).start()
    reactor.run(installSignalHandlers=False)
    layer.flush()
    print(result)
""")


def test_receive_twisted_over_two_shards(redis_shards, many_descriptors):
    """In a child interpreter: the global reactor cannot be restarted within this one."""
    pytest.importorskip("twisted")
    script = _TWISTED_SCRIPT.format(wanted=HELD + 512, held=HELD, limit=SELECT_LIMIT)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script, *(server.url for server in redis_shards)],
        capture_output=True, text=True, timeout=60, env=environment,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('http.request', {'n': 0}), ('http.request', {'n': 1})]", done.stderr


@pytest.fixture
def cluster_layers(redis_cluster, many_descriptors):
    def cluster_layer(**config):
        layer = RedisClusterChannelLayer(**config)
        layer.blpop_timeout = 3
        return layer

    yield from built_layers(cluster_layer, hosts=[redis_cluster.url], prefix="fdtest:", expiry=2)


def test_cluster_blocking_receive_over_several_masters(cluster_layers, redis_cluster):
    layer, sender = cluster_layers(), cluster_layers()
    on = {}  # a "!" channel on each master
    for number in range(200):
        name = f"daphne.response.fd{number}!"
        on.setdefault(redis_cluster.master_of_slot(key_slot(layer.layout.queue_key(name))).port, name)
    assert len(on) == 3
    channels = [*on.values(), "http.request"]  # a normal channel: buckets on every master
    for target in [name + "x" for name in on.values()] + ["http.request"]:
        timer = _send_soon(sender, target, {"to": target})
        assert layer.receive(channels, block=True) == (target, {"to": target})
        timer.join()
    numbers = [connection._sock.fileno()
               for address in layer.router.clients.known()
               for connection in layer.router.client(address).connection_pool._available_connections
               if connection._sock is not None]
    assert len(numbers) >= 3 and max(numbers) >= SELECT_LIMIT
