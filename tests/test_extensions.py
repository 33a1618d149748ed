"""receive_twisted and receive_async against real Redis.

Twisted runs a real reactor in a thread for this module; each test hands
calls to it with blockingCallFromThread, so no test framework plugin is
needed. asyncio tests use asyncio.run.
"""

import asyncio
import itertools
import statistics
import sys
import threading
import time

import pytest

from asgi_redis import RedisChannelLayer, extensions
from asgi_redis.connections import HostShards

WAIT = 0.3  # extension_receive_timeout used by these tests


@pytest.fixture(scope="module")
def reactor():
    pytest.importorskip("twisted")
    from twisted.internet import reactor

    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    yield reactor
    reactor.callFromThread(reactor.stop)
    thread.join(10)


@pytest.fixture(params=["classic", "compact"])
def short_layer(request, make_layer):
    def build(**config):
        layer = make_layer(**{"layout": request.param, **config})
        layer.extension_receive_timeout = WAIT
        return layer

    return build


def twisted_receive(reactor, layer, channels):
    from twisted.internet import threads

    return threads.blockingCallFromThread(reactor, layer.receive_twisted, channels)


def body_keys(client, prefix="asgi:"):
    """Message bodies left in Redis (32 hex chars after the prefix)."""
    return [
        key for key in client.keys(prefix + "*")
        if len(key) == len(prefix) + 32 and all(c in b"0123456789abcdef" for c in key[len(prefix):])
    ]


def names_on_both_shards(layer, per_shard=4):
    """``?`` channel names, ``per_shard`` on each of two shards."""
    by_shard = {0: [], 1: []}
    for i in range(1000):
        name = f"sharded?{i}"
        by_shard[layer.shard_for(name)].append(name)
    return by_shard[0][:per_shard] + by_shard[1][:per_shard]


# -- extensions list ------------------------------------------------------------


def test_extensions_list_twisted_and_asyncio(layer):
    pytest.importorskip("twisted")
    assert {"groups", "flush", "statistics", "twisted", "asyncio"} <= set(layer.extensions)


def test_twisted_left_out_when_not_importable(layer, monkeypatch):
    monkeypatch.setitem(sys.modules, "twisted.internet.threads", None)
    monkeypatch.setattr(extensions, "_twisted_importable", None)
    assert "twisted" not in layer.extensions
    assert "asyncio" in layer.extensions


# -- Twisted ------------------------------------------------------------------------


def test_twisted_receives_each_channel_kind(reactor, short_layer, raw):
    layer = short_layer()
    layer.send("plain", {"text": "a", "data": b"\x00\xff"})
    layer.send("reply?abc", {"n": 1})
    layer.send("daphne.response!xyz", {"n": 2})
    assert twisted_receive(reactor, layer, ["plain"]) == ("plain", {"text": "a", "data": b"\x00\xff"})
    assert twisted_receive(reactor, layer, ["reply?abc"]) == ("reply?abc", {"n": 1})
    assert twisted_receive(reactor, layer, ["daphne.response!"]) == ("daphne.response!xyz", {"n": 2})
    assert body_keys(raw) == []


def test_twisted_waits_bounded_then_fires_nothing(reactor, short_layer):
    layer = short_layer()
    started = time.monotonic()
    assert twisted_receive(reactor, layer, ["empty!"]) == (None, None)
    elapsed = time.monotonic() - started
    # it must wait (daphne calls again at once, so an instant reply would spin)
    assert WAIT * 0.8 <= elapsed < WAIT + 5


def test_twisted_wakes_when_a_message_arrives(reactor, short_layer):
    layer = short_layer()
    layer.extension_receive_timeout = 10
    timer = threading.Timer(0.2, layer.send, ("later!a", {"late": True}))
    started = time.monotonic()
    timer.start()
    assert twisted_receive(reactor, layer, ["later!"]) == ("later!a", {"late": True})
    assert time.monotonic() - started < 5


def test_twisted_empty_list_and_bad_names(reactor, short_layer):
    layer = short_layer()
    assert twisted_receive(reactor, layer, []) == (None, None)
    with pytest.raises(TypeError, match="bad name"):
        twisted_receive(reactor, layer, ["bad name"])
    with pytest.raises(TypeError):
        twisted_receive(reactor, layer, ["foo!bar"])


def test_twisted_encrypted(reactor, short_layer):
    sender = short_layer(symmetric_encryption_keys=["old"])
    receiver = short_layer(symmetric_encryption_keys=["new", "old"])  # rotated: decrypts with either
    sender.send("secret?1", {"k": "v"})
    assert twisted_receive(reactor, receiver, ["secret?1"]) == ("secret?1", {"k": "v"})


def test_twisted_skips_expired(reactor, short_layer):
    layer = short_layer()  # expiry 1 s
    layer.send("old!x", {"stale": True})
    time.sleep(1.1)
    assert twisted_receive(reactor, layer, ["old!"]) == (None, None)


def test_twisted_sharded(reactor, redis_shards):
    layer = RedisChannelLayer(hosts=[server.url for server in redis_shards], expiry=2)
    layer.extension_receive_timeout = WAIT
    try:
        layer.flush()
        names = names_on_both_shards(layer)
        for i, name in enumerate(names):
            layer.send(name, {"i": i})
        for _ in range(4):
            layer.send("spread", {"normal": True})
        got = [twisted_receive(reactor, layer, names + ["spread"]) for _ in range(12)]
        assert sorted(channel for channel, _ in got) == sorted(names + ["spread"] * 4)
        assert twisted_receive(reactor, layer, names + ["spread"]) == (None, None)
        # a message on either shard is seen while waiting on both
        layer.extension_receive_timeout = 10
        for name in (names[0], names[-1]):
            threading.Timer(0.1, layer.send, (name, {"late": 1})).start()
            assert twisted_receive(reactor, layer, names) == (name, {"late": 1})
        for server in redis_shards:
            assert body_keys(server.client()) == []
    finally:
        layer.flush()
        layer.close()


def test_twisted_keeps_connections(reactor, short_layer, raw):
    layer = short_layer()
    before = raw.info("stats")["total_connections_received"]
    for i in range(50):
        layer.send("conn!x", {"i": i})
        assert twisted_receive(reactor, layer, ["conn!"]) == ("conn!x", {"i": i})
    opened = raw.info("stats")["total_connections_received"] - before
    assert opened <= 3  # one for sends, one for the pool thread (1.4.3: ten per message)


def test_twisted_waiting_message_costs_one_round_trip(reactor, short_layer, round_trips):
    layer = short_layer()
    layer.send("trips!a", {"x": 1})
    twisted_receive(reactor, layer, ["trips!"])  # connections now open
    layer.send("trips!a", {"x": 2})
    round_trips.count = 0
    assert twisted_receive(reactor, layer, ["trips!"]) == ("trips!a", {"x": 2})
    assert round_trips.count == 1


def test_twisted_waiting_message_needs_no_thread(reactor, short_layer):
    """A message already queued fires the Deferred at once, in the reactor thread."""
    from twisted.internet import threads

    layer = short_layer()
    layer.send("ready!a", {"x": 1})

    def call():
        deferred = layer.receive_twisted(["ready!"])
        results = []
        deferred.addCallback(results.append)
        return results

    assert threads.blockingCallFromThread(reactor, call) == [("ready!a", {"x": 1})]
    assert getattr(layer, "_twisted_receive_pool", None) is None  # never needed a thread


def test_twisted_connection_error_fails_the_deferred(reactor):
    from asgi_redis.errors import LayerConnectionError
    from tests.servers import free_port

    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}"])
    with pytest.raises(LayerConnectionError):
        twisted_receive(reactor, layer, ["nobody!"])


def test_reactor_and_worker_threads_share_one_layer(reactor, short_layer, raw):
    """daphne's reactor receives while runworker-style threads send and receive."""
    from twisted.internet import defer, threads

    layer = short_layer(capacity=1000)  # the workers may run ahead of the one reactor reader
    layer.extension_receive_timeout = 2
    per_thread = 50
    workers = 4

    @defer.inlineCallbacks
    def reactor_side():
        got = []
        while len(got) < per_thread * workers:
            channel, message = yield layer.receive_twisted(["daphne.response!"])
            if channel is None:
                break
            got.append((channel, message["i"]))
        return got

    errors = []

    def worker(n):
        try:
            for i in range(per_thread):
                layer.send(f"http.request.{n}", {"i": i})
                channel, message = layer.receive([f"http.request.{n}"], block=True)
                assert (channel, message) == (f"http.request.{n}", {"i": i})
                layer.send(f"daphne.response!{n}", {"i": i})
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads_ = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads_:
        thread.start()
    got = threads.blockingCallFromThread(reactor, reactor_side)
    for thread in threads_:
        thread.join(30)
    assert errors == []
    expected = [(f"daphne.response!{n}", i) for n in range(workers) for i in range(per_thread)]
    assert sorted(got) == sorted(expected)
    for n in range(workers):  # per-writer order kept
        assert [i for channel, i in got if channel == f"daphne.response!{n}"] == list(range(per_thread))
    assert body_keys(raw) == []


# -- asyncio --------------------------------------------------------------------------


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


async def _receive_all_kinds(layer):
    try:
        layer.send("plain", {"text": "a", "data": b"\x00"})
        layer.send("reply?abc", {"n": 1})
        layer.send("daphne.response!xyz", {"n": 2})
        return [
            await layer.receive_async(["plain"]),
            await layer.receive_async(["reply?abc"]),
            await layer.receive_async(["daphne.response!"]),
        ]
    finally:
        await layer.close_async()


def test_async_receives_each_channel_kind(short_layer, raw):
    layer = short_layer()
    assert run(_receive_all_kinds, layer) == [
        ("plain", {"text": "a", "data": b"\x00"}),
        ("reply?abc", {"n": 1}),
        ("daphne.response!xyz", {"n": 2}),
    ]
    assert body_keys(raw) == []


async def _timed_receive(layer, channels):
    started = time.monotonic()
    try:
        return await layer.receive_async(channels), time.monotonic() - started
    finally:
        await layer.close_async()


def test_async_waits_bounded_then_returns_nothing(short_layer):
    result, elapsed = run(_timed_receive, short_layer(), ["empty?1"])
    assert result == (None, None)
    assert WAIT * 0.8 <= elapsed < WAIT + 5


def test_async_wakes_when_a_message_arrives_and_loop_stays_free(short_layer):
    layer = short_layer()
    layer.extension_receive_timeout = 10

    async def scenario():
        async def send_later():
            await asyncio.sleep(0.2)  # runs only if receive_async does not block the loop
            layer.send("later?x", {"late": True})

        sender = asyncio.ensure_future(send_later())
        try:
            return await _timed_receive(layer, ["later?x"])
        finally:
            await sender

    result, elapsed = asyncio.run(scenario())
    assert result == ("later?x", {"late": True})
    assert elapsed < 5


def test_async_empty_list_and_bad_names(short_layer):
    layer = short_layer()
    assert run(layer.receive_async, []) == (None, None)
    with pytest.raises(TypeError, match="bad name"):
        run(layer.receive_async, ["bad name"])


def test_async_encrypted_and_expired(short_layer):
    sender = short_layer(symmetric_encryption_keys=["old"])
    receiver = short_layer(symmetric_encryption_keys=["new", "old"])  # rotated: decrypts with either
    sender.send("secret?1", {"k": "v"})
    assert run(_timed_receive, receiver, ["secret?1"])[0] == ("secret?1", {"k": "v"})
    sender.send("old!x", {"stale": True})
    time.sleep(1.1)
    assert run(_timed_receive, receiver, ["old!"])[0] == (None, None)


def test_async_sharded(redis_shards):
    layer = RedisChannelLayer(hosts=[server.url for server in redis_shards], expiry=2)
    layer.extension_receive_timeout = WAIT
    names = names_on_both_shards(layer)

    async def scenario():
        try:
            got = [await layer.receive_async(names + ["spread"]) for _ in range(12)]
            nothing = await layer.receive_async(names + ["spread"])
            return got, nothing
        finally:
            await layer.close_async()

    try:
        layer.flush()
        for i, name in enumerate(names):
            layer.send(name, {"i": i})
        for _ in range(4):
            layer.send("spread", {"normal": True})
        got, nothing = asyncio.run(scenario())
        assert sorted(channel for channel, _ in got) == sorted(names + ["spread"] * 4)
        assert nothing == (None, None)
        for server in redis_shards:
            assert body_keys(server.client()) == []
    finally:
        layer.flush()
        layer.close()


def test_async_concurrent_readers_get_each_message_once(short_layer, raw):
    layer = short_layer()
    layer.extension_receive_timeout = 1

    async def scenario():
        try:
            readers = [asyncio.ensure_future(layer.receive_async(["shared!"])) for _ in range(5)]
            await asyncio.sleep(0.05)
            for i in range(5):
                layer.send(f"shared!{i}", {"i": i})
            return await asyncio.gather(*readers)
        finally:
            await layer.close_async()

    got = asyncio.run(scenario())
    assert sorted(message["i"] for _, message in got) == list(range(5))
    assert body_keys(raw) == []


def test_async_reloads_flushed_scripts(short_layer, raw):
    layer = short_layer()
    layer.send("scripts?1", {"a": 1})
    raw.script_flush()
    assert run(_timed_receive, layer, ["scripts?1"])[0] == ("scripts?1", {"a": 1})


def test_async_keeps_connections(short_layer, raw):
    layer = short_layer()

    async def scenario():
        try:
            for i in range(50):
                layer.send("conn?1", {"i": i})
                assert await layer.receive_async(["conn?1"]) == ("conn?1", {"i": i})
        finally:
            await layer.close_async()

    before = raw.info("stats")["total_connections_received"]
    asyncio.run(scenario())
    assert raw.info("stats")["total_connections_received"] - before <= 3


class _CustomShards(HostShards):
    """A shard set picking clients its own way, as Sentinel does."""

    def client(self, index):
        return super().client(index)


def test_async_falls_back_to_executor_for_other_shard_sets(make_layer, redis_server):
    class CustomLayer(RedisChannelLayer):
        def _create_shards(self, hosts):
            return _CustomShards([redis_server.url], self.connection_kwargs)

    layer = CustomLayer(expiry=1)
    layer.extension_receive_timeout = WAIT
    try:
        layer.flush()
        layer.send("custom!a", {"ok": True})
        assert run(_timed_receive, layer, ["custom!"])[0] == ("custom!a", {"ok": True})
        assert run(_timed_receive, layer, ["custom!"])[0] == (None, None)
    finally:
        layer.flush()
        layer.close()


def test_blocking_wait_ends_inside_the_default_socket_timeout(layer):
    """redis-py 8 reads with a 5 s socket timeout by default: a 5 s BLPOP must not hit it."""
    from asgi_redis.receive.plan import block_limit as _block_limit
    from asgi_redis.receive.plan import default_socket_timeout as _default_socket_timeout

    client = layer.shards.client(0)
    default = _default_socket_timeout(client.connection_pool.connection_class)
    if default is None:
        assert _block_limit(client) == float("inf")
    else:
        assert _block_limit(client) < default


def test_async_connection_error_names_the_shard():
    from asgi_redis.errors import LayerConnectionError
    from tests.servers import free_port

    port = free_port()
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}"])
    with pytest.raises(LayerConnectionError, match=str(port)):
        run(layer.receive_async, ["nobody!"])


def median_wake_delay(layer, receive_once, channels, tries=8):
    """Median time from a send to its receipt by a receive already waiting on
    ``channels`` (first on shard 0, second on shard 1); the message goes to the
    second, the shard a wait in turns would look at last."""
    delays = []

    def send(i, sent_at):
        sent_at.append(time.monotonic())
        layer.send(channels[1], {"i": i})

    for i in range(tries):
        layer._receive_turn = itertools.count()  # every plan starts its turns at shard 0
        sent_at = []
        timer = threading.Timer(0.01, send, (i, sent_at))
        timer.start()
        result = receive_once(channels)
        delays.append(time.monotonic() - sent_at[0])
        timer.join()
        assert result == (channels[1], {"i": i})
    return statistics.median(delays)


def test_sharded_waits_wake_without_the_hz_tick(reactor, redis_shards):
    """A receive spanning both shards waits on both at once, not in turns
    whose slices Redis ends only on its 100 ms hz tick."""
    layer = RedisChannelLayer(hosts=[server.url for server in redis_shards], expiry=2)
    layer.extension_receive_timeout = 5
    names = names_on_both_shards(layer, per_shard=1)
    try:
        layer.flush()
        twisted_delay = median_wake_delay(layer, lambda channels: twisted_receive(reactor, layer, channels), names)

        async def scenario():
            loop = asyncio.get_running_loop()

            def receive_once(channels):
                return asyncio.run_coroutine_threadsafe(layer.receive_async(channels), loop).result()

            try:
                return await loop.run_in_executor(None, median_wake_delay, layer, receive_once, names)
            finally:
                await layer.close_async()

        async_delay = asyncio.run(scenario())
        assert twisted_delay < 0.05, twisted_delay
        assert async_delay < 0.05, async_delay
    finally:
        layer.flush()
        layer.close()
