"""SyncChannelsRedisClient against the real peer: channels_redis 4.3's async layer.

Runs in the tox env ``modern`` (channels 4, channels_redis 4.3); elsewhere it
skips, since asgiref 1.1.2 and channels 4 cannot share an environment.
"""

import asyncio
import os
import threading

import pytest

pytest.importorskip("channels_redis")

import channels.exceptions  # noqa: E402
from channels_redis.core import RedisChannelLayer  # noqa: E402
from cryptography.fernet import InvalidToken  # noqa: E402

from asgi_redis.errors import ChannelFull as LayerChannelFull  # noqa: E402
from asgi_redis.modern import ChannelFull, SyncChannelsRedisClient, SyncPubSubClient  # noqa: E402
from asgi_redis.tools.modern_bench import format_report, run_benchmark  # noqa: E402

from .helpers import LayerBuilder  # noqa: E402
from .modern_support import CONFIGS, KEYS, in_forked_child, run  # noqa: E402
from .servers import RedisProcess  # noqa: E402


def receive_all(layer, channels, timeout=10):
    async def receive():
        return [await asyncio.wait_for(layer.receive(channel), timeout) for channel in channels]

    return run(receive())


def new_channels(layer, count):
    async def make():
        return [await layer.new_channel() for _ in range(count)]

    return run(make())


def queued_messages(server):
    """Messages left in channel sorted sets, to prove each was received exactly once."""
    client = server.client()
    try:
        return sum(client.zcard(key) for key in client.keys("asgi*")
                   if b":group:" not in key and client.type(key) == b"zset")
    finally:
        client.close()


@pytest.fixture
def pair(redis_server):
    """Build (our client, channels_redis layer) with the same config; the
    client flushes before use, and it is flushed and closed after."""
    clients = LayerBuilder(SyncChannelsRedisClient)

    def build(hosts=None, **config):
        config["hosts"] = hosts or [redis_server.url]
        client = clients(**config)
        layer = RedisChannelLayer(**config)
        layer.brpop_timeout = 0.2  # sharded normal channels: visit every shard quickly
        return client, layer

    yield build
    clients.close()


@pytest.fixture(params=list(CONFIGS))
def config(request):
    return CONFIGS[request.param]


def test_send_reaches_specific_and_normal_channels(pair, config, redis_server):
    client, layer = pair(**config)
    specific = new_channels(layer, 2)
    client.send(specific[0], {"type": "chat.message", "text": "hi"})
    client.send(specific[1], {"type": "chat.message", "n": 2})
    client.send("worker.jobs", {"type": "job", "ids": [1, 2]})
    assert receive_all(layer, [specific[1], specific[0], "worker.jobs"]) == [
        {"type": "chat.message", "n": 2},
        {"type": "chat.message", "text": "hi"},
        {"type": "job", "ids": [1, 2]},
    ]
    assert queued_messages(redis_server) == 0


@pytest.mark.parametrize("size", [1, 100, 1000])
def test_group_send_reaches_every_member(pair, config, redis_server, size):
    client, layer = pair(**config)
    other = RedisChannelLayer(hosts=[redis_server.url], **config)  # a second consumer process
    specific = new_channels(layer, (size + 1) // 2) + new_channels(other, size // 4)
    members = specific + [f"worker.{i}" for i in range(size - len(specific))]

    async def join():
        for channel in members:
            await layer.group_add("room", channel)

    run(join())
    client.group_send("room", {"type": "room.event", "body": b"\x00\xff" if not config else "x"})
    expected = {"type": "room.event", "body": b"\x00\xff" if not config else "x"}
    mine = [m for m in members if not m.startswith("specific." + other.client_prefix)]
    theirs = [m for m in members if m.startswith("specific." + other.client_prefix)]
    assert receive_all(layer, mine) == [expected] * len(mine)
    assert receive_all(other, theirs) == [expected] * len(theirs)
    assert queued_messages(redis_server) == 0


def test_our_group_add_is_honoured_by_their_group_send(pair, config, redis_server):
    client, layer = pair(**config)
    stays, leaves = new_channels(layer, 2)
    client.group_add("news", stays)
    client.group_add("news", leaves)
    client.group_add("news", "worker.news")
    client.group_discard("news", leaves)
    client.group_discard("news", "never.added")
    run(layer.group_send("news", {"type": "news", "id": 7}))
    assert receive_all(layer, [stays, "worker.news"]) == [{"type": "news", "id": 7}] * 2

    # nothing for the leaver, neither in Redis nor in the layer's buffer of channels
    # received for others (cancelling a waiting channels_redis receive, as a timeout
    # would, can stall under load)
    assert queued_messages(redis_server) == 0
    assert layer.receive_buffer[leaves].empty()


def test_our_group_send_after_their_group_discard(pair):
    client, layer = pair()
    stays, leaves = new_channels(layer, 2)
    run(layer.group_add("g", stays))
    run(layer.group_add("g", leaves))
    run(layer.group_discard("g", leaves))
    client.group_send("g", {"type": "t"})
    assert receive_all(layer, [stays]) == [{"type": "t"}]


def test_group_send_to_empty_or_unknown_group(pair, config, redis_server):
    client, layer = pair(**config)
    client.group_send("nobody.here", {"type": "void"})
    client.group_add("emptied", "a.b")
    client.group_discard("emptied", "a.b")
    client.group_send("emptied", {"type": "void"})
    assert queued_messages(redis_server) == 0


def test_layout_matches_channels_redis(pair, redis_server):
    """Same keys, TTLs and member shape as channels_redis writes for the same calls."""
    client, layer = pair(expiry=30, group_expiry=300)
    raw = redis_server.client()
    shapes, ttls = {}, set()
    for who, sender in (("them", None), ("us", client)):
        [specific] = new_channels(layer, 1)
        if sender is None:
            run(layer.send(specific, {"type": "a"}))
            run(layer.send("normal", {"type": "a"}))
            run(layer.group_add("grp", specific))
        else:
            client.send(specific, {"type": "a"})
            client.send("normal", {"type": "a"})
            client.group_add("grp", specific)
        keys = {}
        for key in raw.keys("asgi*"):
            members = [m.replace(specific.encode(), b"<channel>") for m in raw.zrange(key, 0, -1)]
            keys[key.replace(layer.client_prefix.encode(), b"<client>")] = (
                raw.type(key), len(members), members[-1][12:] if b":group:" not in key else members)
            ttls.add((b":group:" in key, raw.ttl(key)))
        shapes[who] = keys
        client.flush()
    raw.close()
    assert shapes["us"] == shapes["them"]
    assert ttls <= {(True, 300), (True, 299), (False, 30), (False, 29)}
    assert set(shapes["us"]) == {b"asgispecific.<client>!", b"asgi:group:grp", b"asginormal"}


def test_capacity_and_channel_capacity(pair):
    client, layer = pair(capacity=2, channel_capacity={"tight.*": 1})
    client.send("tight.one", {"type": "a"})
    with pytest.raises(ChannelFull) as caught:
        client.send("tight.one", {"type": "b"})
    assert isinstance(caught.value, channels.exceptions.ChannelFull)
    assert isinstance(caught.value, LayerChannelFull)
    client.send("roomy", {"type": "a"})
    client.send("roomy", {"type": "a"})
    with pytest.raises(channels.exceptions.ChannelFull):
        client.send("roomy", {"type": "a"})
    # a full member is skipped, the others still get the group message
    client.group_add("g", "roomy")
    client.group_add("g", "empty")
    client.group_send("g", {"type": "g"})
    assert receive_all(layer, ["empty", "roomy", "roomy"]) == [{"type": "g"}, {"type": "a"}, {"type": "a"}]


def test_their_capacity_check_counts_our_messages(pair):
    client, layer = pair(capacity=1)
    client.send("shared", {"type": "ours"})

    async def theirs():
        with pytest.raises(channels.exceptions.ChannelFull):
            await layer.send("shared", {"type": "theirs"})

    run(theirs())


def test_expired_members_and_messages_are_dropped(pair, redis_server):
    client, layer = pair(expiry=5, group_expiry=5)
    raw = redis_server.client()
    old = 1_000_000.0  # scored long ago: both cutoffs remove it
    raw.zadd("asgi:group:g", {"old.member": old, "new.member": 9e12})
    raw.zadd("asgistale", {b"x" * 12 + b"\x80": old})
    client.send("stale", {"type": "fresh"})
    client.group_send("g", {"type": "g"})
    assert raw.zrange("asgi:group:g", 0, -1) == [b"new.member"]
    assert raw.zcard("asgistale") == 1 and raw.ttl("asgistale") in (4, 5)
    assert raw.exists("asgiold.member") == 0
    raw.close()
    assert receive_all(layer, ["stale", "new.member"]) == [{"type": "fresh"}, {"type": "g"}]


def test_sharded_sends_reach_their_receivers(pair, redis_shards):
    client, layer = pair(hosts=[server.url for server in redis_shards])
    specific = new_channels(layer, 20)
    for index, channel in enumerate(specific):
        client.send(channel, {"type": "s", "i": index})
    for index in range(4):
        client.send("normal.jobs", {"type": "n", "i": index})
    assert [server.client().exists("asginormal.jobs") for server in redis_shards] == [1, 1]
    got = receive_all(layer, specific)
    assert got == [{"type": "s", "i": i} for i in range(20)]
    # channels_redis receivers rotate over the shards, one receive per shard in turn
    assert sorted(m["i"] for m in receive_all(layer, ["normal.jobs"] * 4)) == [0, 1, 2, 3]


def test_sharded_group_send(pair, redis_shards):
    client, layer = pair(hosts=[server.url for server in redis_shards], symmetric_encryption_keys=KEYS)
    other = RedisChannelLayer(hosts=[server.url for server in redis_shards], symmetric_encryption_keys=KEYS)
    # specific channels only: a channels_redis receiver of a normal channel reads one
    # shard per receive() and would wait forever on the wrong one
    mine, theirs = new_channels(layer, 50), new_channels(other, 50)
    for channel in mine + theirs:
        client.group_add("big", channel)
    client.group_send("big", {"type": "big"})
    run(layer.group_send("big", {"type": "theirs"}))
    assert receive_all(layer, mine) == [{"type": "big"}] * 50
    assert receive_all(other, theirs) == [{"type": "big"}] * 50
    assert receive_all(layer, mine) == [{"type": "theirs"}] * 50


def test_round_trips(pair, round_trips):
    client, layer = pair()
    client.group_add("g", "a.b")
    client.group_send("g", {"type": "warm"})  # loads the scripts once
    client.send("a.b", {"type": "warm"})
    round_trips.count = 0
    client.group_send("g", {"type": "x"})
    assert round_trips.count == 1
    round_trips.count = 0
    client.send("a.b", {"type": "x"})
    assert round_trips.count == 1
    round_trips.count = 0
    client.group_add("g", "c.d")
    assert round_trips.count == 1


def test_encrypted_group_send_is_two_round_trips(pair, round_trips):
    client, layer = pair(symmetric_encryption_keys=KEYS)
    for index in range(50):
        client.group_add("g", f"c.{index}")
    client.group_send("g", {"type": "warm"})
    round_trips.count = 0
    client.group_send("g", {"type": "x"})
    assert round_trips.count == 2


def test_key_rotation_and_wrong_key(pair, redis_server):
    client, layer = pair(symmetric_encryption_keys=["new"])
    rotated = RedisChannelLayer(hosts=[redis_server.url], symmetric_encryption_keys=["newer", "new"])
    client.send("rot", {"type": "r"})
    assert receive_all(rotated, ["rot"]) == [{"type": "r"}]
    stranger = RedisChannelLayer(hosts=[redis_server.url], symmetric_encryption_keys=["other"])
    client.send("rot", {"type": "r"})
    with pytest.raises(InvalidToken):
        receive_all(stranger, ["rot"])


def test_threads_share_one_client(pair):
    client, layer = pair(capacity=1000)

    def worker(number):
        for index in range(50):
            client.send("fan.in", {"type": "t", "w": number, "i": index})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = receive_all(layer, ["fan.in"] * 400)
    assert sorted((m["w"], m["i"]) for m in got) == [(w, i) for w in range(8) for i in range(50)]


def _send_from_child(client, channel):
    client.send(channel, {"type": "from.child", "pid": os.getpid()})
    client.group_send("forked", {"type": "group.from.child"})


def test_fork_after_use(pair):
    client, layer = pair()
    [channel] = new_channels(layer, 1)
    client.group_add("forked", channel)
    client.send(channel, {"type": "from.parent"})  # the pool now holds a connection
    in_forked_child(_send_from_child, client, channel)
    client.send(channel, {"type": "parent.again"})
    got = receive_all(layer, [channel] * 4)
    assert [m["type"] for m in got] == ["from.parent", "from.child", "group.from.child", "parent.again"]


def test_sentinel_hosts():
    master = RedisProcess()
    monitor = f"sentinel monitor mymaster 127.0.0.1 {master.port} 1"
    sentinel = RedisProcess(sentinel=True, extra_config=[monitor])
    try:
        host = {"sentinels": [("127.0.0.1", sentinel.port)], "master_name": "mymaster"}
        client, layer = SyncChannelsRedisClient(hosts=[host]), RedisChannelLayer(hosts=[host])
        [channel] = new_channels(layer, 1)
        client.send(channel, {"type": "via.sentinel"})
        client.group_add("s", channel)
        client.group_send("s", {"type": "group.via.sentinel"})
        got = receive_all(layer, [channel, channel])
        assert got == [{"type": "via.sentinel"}, {"type": "group.via.sentinel"}]
        assert master.client().exists("asgi:group:s") == 1
        client.flush()
        assert master.client().dbsize() == 0
        client.close()
    finally:
        sentinel.close()
        master.close()


def test_from_settings(redis_server):
    layers = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [redis_server.url], "prefix": "site", "capacity": 3}},
        "pubsub": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {}},
        "memory": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    client = SyncChannelsRedisClient.from_settings(channel_layers=layers)
    assert (client.prefix, client.capacity) == ("site", 3)
    # the pub/sub layer gets its own producer (tests/test_modern_pubsub.py); others are refused
    assert isinstance(SyncChannelsRedisClient.from_settings("pubsub", channel_layers=layers), SyncPubSubClient)
    with pytest.raises(ValueError, match="InMemoryChannelLayer"):
        SyncChannelsRedisClient.from_settings("memory", channel_layers=layers)
    with pytest.raises(ValueError, match="'missing'"):
        SyncChannelsRedisClient.from_settings("missing", channel_layers=layers)

    from django.conf import settings

    if not settings.configured:
        settings.configure(CHANNEL_LAYERS=layers)
    expected = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    assert SyncChannelsRedisClient.from_settings().prefix == expected


def test_bad_arguments():
    client = SyncChannelsRedisClient(hosts=["redis://127.0.0.1:1"])
    with pytest.raises(TypeError, match="bad name!"):
        client.send("bad name!", {})
    with pytest.raises(TypeError, match="not list"):
        client.send("ok", ["not a dict"])
    with pytest.raises(ValueError, match="__asgi_channel__"):
        client.send("ok", {"__asgi_channel__": "x"})
    with pytest.raises(TypeError, match="group name"):
        client.group_send("x" * 100, {})
    with pytest.raises(ValueError, match="single string"):
        SyncChannelsRedisClient(hosts="redis://localhost")
    with pytest.raises(ValueError, match="capacity"):
        SyncChannelsRedisClient(capacity=0)
    with pytest.raises(ValueError, match="'yaml'"):
        SyncChannelsRedisClient(serializer_format="yaml")
    with pytest.raises(TypeError, match="prefix"):
        SyncChannelsRedisClient(prefix=b"asgi")


def test_no_silent_retries_and_clear_connection_errors():
    server = RedisProcess()
    client = SyncChannelsRedisClient(hosts=[server.url])
    try:
        pool = client._clients[0].connection_pool
        # the classic layers' at-most-once policy (issue 11: one client factory):
        # a connect may be tried twice, a written send never
        from asgi_redis.retry import SafeRetry, tracked_connection_class

        assert isinstance(pool.connection_kwargs["retry"], SafeRetry)
        assert pool.connection_class is tracked_connection_class(pool.connection_class)
        client.send("x", {"type": "x"})
        server.kill()
        with pytest.raises(ConnectionError, match="127.0.0.1"):
            client.send("x", {"type": "x"})
    finally:
        server.close()


def test_benchmark_runs(redis_server, capsys):
    figures = run_benchmark(redis_server.url, members=20, calls=20)
    rates = figures["calls_per_second"]
    assert set(rates) >= {"sync group_send", "async_to_sync(group_send)"}
    assert all(rate > 0 for rate in rates.values())
    # the sync client reuses its pooled connection; async_to_sync opens one per call
    assert figures["connections_per_call"]["sync group_send"] < 0.5
    print(format_report(figures, 20))
