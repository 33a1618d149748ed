"""SyncPubSubClient against the real peer: channels_redis 4.3's RedisPubSubChannelLayer.

Runs in the tox env ``modern`` (channels 4, channels_redis 4.3); elsewhere it
skips. The consumers are unmodified pub/sub layers in one event loop for the
module, as in a consumer process; every wait on them has an overall timeout,
so a stall fails the test instead of hanging the run.
"""

import asyncio
import threading
import time

import pytest

pytest.importorskip("channels_redis")

from channels_redis.core import RedisChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: E402
from channels_redis.serializers import JSONSerializer, registry  # noqa: E402
from channels_redis.utils import _consistent_hash  # noqa: E402
from cryptography.fernet import InvalidToken  # noqa: E402

from asgi_redis.errors import LayerConnectionError  # noqa: E402
from asgi_redis.modern import GroupMembershipError, SyncChannelsRedisClient, SyncPubSubClient  # noqa: E402
from asgi_redis.modern.pubsub_wire import group_channel, server_of  # noqa: E402
from asgi_redis.tools.pubsub_bench import format_report, run_benchmark  # noqa: E402

from .helpers import LayerBuilder  # noqa: E402
from .modern_support import CONFIGS, KEYS, LOOP, in_forked_child, run  # noqa: E402
from .servers import RedisProcess  # noqa: E402

PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"


def subscriptions(servers, names):
    """{name: subscriber count} summed over the servers, as Redis reports it."""
    counts = dict.fromkeys(names, 0)
    for server in servers:
        client = server.client()
        try:
            for name, count in client.pubsub_numsub(*names):
                counts[name.decode()] += count
        finally:
            client.close()
    return counts


def until_subscribed(servers, names):
    """Wait (inside the consumers' loop) until Redis has processed their SUBSCRIBEs:
    a PUBLISH that Redis handles before them would find nobody."""
    async def wait():
        while not all(subscriptions(servers, names).values()):
            await asyncio.sleep(0.01)

    run(wait(), timeout=10)


def listen(layer, channels, servers):
    """receive() tasks, one per channel, returned once every channel is subscribed."""
    tasks = [LOOP.create_task(layer.receive(channel)) for channel in channels]
    until_subscribed(servers, list(channels))
    return tasks


def results(tasks, timeout=10):
    return run(asyncio.gather(*tasks), timeout)


def receive_all(layer, channels, timeout=10):
    async def receive():
        return [await layer.receive(channel) for channel in channels]

    return run(receive(), timeout)


def new_channels(layer, count):
    async def make():
        return [await layer.new_channel() for _ in range(count)]

    return run(make())


def join(layer, group, channels):
    async def add():
        for channel in channels:
            await layer.group_add(group, channel)

    run(add())


@pytest.fixture
def site():
    """Build (producer, consumer factory) on some servers with one config;
    every producer is closed and every consumer layer flushed (connections
    closed) after the test."""
    producers = LayerBuilder(SyncPubSubClient, flush_first=False, flush_after=False)
    consumers = []  # channels_redis's async layers: flushed in our loop, not by the builder

    def build(servers, **config):
        hosts = [server.url for server in servers]
        producer = producers(hosts=hosts, **config)

        def consumer(**overrides):
            layer = RedisPubSubChannelLayer(hosts=hosts, **{**config, **overrides})
            consumers.append(layer)
            return layer

        return producer, consumer

    yield build
    producers.close()
    for layer in consumers:
        run(layer.flush())


@pytest.fixture(params=list(CONFIGS))
def config(request):
    return CONFIGS[request.param]


def message_for(config, **fields):
    # bytes only where the format carries them
    body = "text" if config.get("serializer_format") == "json" else b"\x00\xff"
    return {"type": "chat.message", "body": body, "n": [1, 2.5, None], "s": "\u00e9", **fields}


def test_send_reaches_every_kind_of_channel(site, config, redis_server):
    producer, consumer = site([redis_server], **config)
    first, second = consumer(), consumer()  # two consumer processes
    specific = new_channels(first, 2) + new_channels(second, 1)
    named = ["worker.jobs", "specific.proc1!abc", "specific.proc1!"]
    until_subscribed([redis_server], specific)
    tasks = listen(first, named, [redis_server])
    for index, channel in enumerate(specific + named):
        assert producer.send(channel, message_for(config, i=index)) == 1
    assert receive_all(first, specific[:2]) == [message_for(config, i=0), message_for(config, i=1)]
    assert receive_all(second, specific[2:]) == [message_for(config, i=2)]
    assert results(tasks) == [message_for(config, i=3 + index) for index in range(3)]
    # exactly once: the next message on each channel is the next one sent
    for channel in specific + named:
        producer.send(channel, {"type": "marker"})
    assert receive_all(first, specific[:2] + named) == [{"type": "marker"}] * 5
    assert receive_all(second, specific[2:]) == [{"type": "marker"}]


def test_group_send_reaches_every_member_once(site, config, redis_server):
    producer, consumer = site([redis_server], **config)
    first, second = consumer(), consumer()
    mine, theirs = new_channels(first, 3), new_channels(second, 2)
    [outsider] = new_channels(first, 1)
    join(first, "room", mine)
    join(second, "room", theirs)
    until_subscribed([redis_server], [group_channel("asgi", "room")])
    # one delivery per consumer process, which hands it to each of its members
    assert producer.group_send("room", message_for(config)) == 2
    assert producer.group_send("room", {"type": "marker"}) == 2
    assert receive_all(first, mine * 2) == [message_for(config)] * 3 + [{"type": "marker"}] * 3
    assert receive_all(second, theirs * 2) == [message_for(config)] * 2 + [{"type": "marker"}] * 2
    # the outsider's connection carried the group messages too; none was for it
    producer.send(outsider, {"type": "direct"})
    assert receive_all(first, [outsider]) == [{"type": "direct"}]


def test_publishes_exactly_what_the_layer_publishes(site, config, redis_shards):
    """Same server, same Redis channel, same bytes (the same plaintext when encrypted)."""
    producer, consumer = site(redis_shards, prefix="site", **config)
    layer = consumer()
    watchers = []
    for server in redis_shards:
        watcher = server.client().pubsub()
        watcher.psubscribe("*")
        assert watcher.get_message(timeout=10)["type"] == "psubscribe"  # Redis has it
        watchers.append(watcher)
    names = ["worker.jobs", "sitespecific.0123abcd", "specific.proc!xyz", "a", "b.c"]
    groups = ["room", "lobby", "g-1"]
    message = message_for(config)

    def published():
        expected = len(names) + len(groups)
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < expected and time.monotonic() < deadline:
            for index, watcher in enumerate(watchers):
                got = watcher.get_message(timeout=0.05)
                if got is not None:
                    seen.append((index, got["channel"].decode(), got["data"]))
        return sorted(seen)

    async def theirs():
        for name in names:
            await layer.send(name, message)
        for group in groups:
            await layer.group_send(group, message)

    run(theirs())
    by_layer = published()
    for name in names:
        producer.send(name, message)
    for group in groups:
        producer.group_send(group, message)
    by_us = published()
    for watcher in watchers:
        watcher.close()
    assert [entry[:2] for entry in by_us] == [entry[:2] for entry in by_layer]
    assert {entry[0] for entry in by_us} == {0, 1}  # both servers were used
    assert "site__group__room" in {entry[1] for entry in by_us}
    if "symmetric_encryption_keys" in config:
        assert [layer.deserialize(entry[2]) for entry in by_us] == [message] * len(by_us)
        assert [producer._codec.decode(entry[2]) for entry in by_layer] == [message] * len(by_us)
    else:
        assert by_us == by_layer


def on_both_servers(make_name, per_server=3):
    """Names from ``make_name(i)``, ``per_server`` of them on each of two servers."""
    chosen = {0: [], 1: []}
    for index in range(500):
        name = make_name(index)
        bucket = chosen[_consistent_hash(name, 2)]  # channels_redis's own choice
        if len(bucket) < per_server:
            bucket.append(name)
        if all(len(names) == per_server for names in chosen.values()):
            return chosen[0] + chosen[1]
    raise AssertionError("no names on both servers")


def test_two_hosts(site, redis_shards):
    producer, consumer = site(redis_shards, symmetric_encryption_keys=KEYS)
    first, second = consumer(), consumer()
    specific = on_both_servers(lambda index: run(first.new_channel()), per_server=4)
    named = on_both_servers("worker.{}".format) + on_both_servers("specific.p{}!x".format)
    groups = [name[len("asgi__group__"):]
              for name in on_both_servers(lambda index: group_channel("asgi", f"group{index}"))]
    for name_set in (specific, named, [group_channel("asgi", group) for group in groups]):
        # our choice of server is channels_redis's
        assert [server_of(name, 2) for name in name_set] == [_consistent_hash(name, 2) for name in name_set]
    # group members apart from the channels sent to: across servers nothing is ordered
    members, [member] = new_channels(first, 2), new_channels(second, 1)
    for group in groups:
        join(first, group, members)
        join(second, group, [member])
    until_subscribed(redis_shards, specific + [group_channel("asgi", group) for group in groups])
    tasks = listen(first, named, redis_shards)
    for index, channel in enumerate(specific + named):
        assert producer.send(channel, {"type": "direct", "i": index}) == 1
    for group in groups:
        assert producer.group_send(group, {"type": "group", "g": group}) == 2
    assert receive_all(first, specific) == [{"type": "direct", "i": index} for index in range(8)]
    assert results(tasks) == [{"type": "direct", "i": 8 + index} for index in range(12)]
    # each group's messages arrive in order on its server's connection; servers interleave
    for channel in members:
        assert sorted(m["g"] for m in receive_all(first, [channel] * 6)) == sorted(groups)
    assert sorted(m["g"] for m in receive_all(second, [member] * 6)) == sorted(groups)


def test_key_rotation_and_wrong_key(site, redis_server):
    producer, consumer = site([redis_server], symmetric_encryption_keys=["old"])
    rotated = consumer(symmetric_encryption_keys=["newer", "old"])
    stranger = consumer(symmetric_encryption_keys=["other"])
    [channel] = new_channels(rotated, 1)
    [strangers] = new_channels(stranger, 1)
    until_subscribed([redis_server], [channel, strangers])
    producer.send(channel, {"type": "r"})
    producer.send(strangers, {"type": "r"})
    assert receive_all(rotated, [channel]) == [{"type": "r"}]
    with pytest.raises(InvalidToken):
        receive_all(stranger, [strangers])


def test_nobody_listening_means_gone(site, redis_server):
    producer, consumer = site([redis_server])
    raw = redis_server.client()
    keys_before = raw.dbsize()
    assert producer.send("nobody.here", {"type": "lost"}) == 0
    assert producer.group_send("empty", {"type": "lost"}) == 0
    layer = consumer()
    [task] = listen(layer, ["nobody.here"], [redis_server])
    [member] = new_channels(layer, 1)
    join(layer, "empty", [member])
    until_subscribed([redis_server], [group_channel("asgi", "empty")])
    assert producer.send("nobody.here", {"type": "kept"}) == 1
    assert producer.group_send("empty", {"type": "kept"}) == 1
    assert results([task]) == [{"type": "kept"}]
    assert receive_all(layer, [member]) == [{"type": "kept"}]
    assert raw.dbsize() == keys_before  # nothing was ever stored
    raw.close()


def test_left_member_gets_nothing(site, redis_server):
    producer, consumer = site([redis_server])
    layer = consumer()
    stays, leaves = new_channels(layer, 2)
    join(layer, "g", [stays, leaves])
    until_subscribed([redis_server], [group_channel("asgi", "g")])
    run(layer.group_discard("g", leaves))
    assert producer.group_send("g", {"type": "g"}) == 1
    producer.send(leaves, {"type": "direct"})  # after the group message, on the same connection
    assert receive_all(layer, [stays, leaves]) == [{"type": "g"}, {"type": "direct"}]
    run(layer.group_discard("g", stays))  # the last member: the process unsubscribes

    async def unsubscribed():
        while subscriptions([redis_server], ["asgi__group__g"])["asgi__group__g"]:
            await asyncio.sleep(0.01)

    run(unsubscribed(), timeout=10)
    assert producer.group_send("g", {"type": "g"}) == 0


def test_membership_cannot_change_from_a_producer(site, redis_server, round_trips):
    producer, consumer = site([redis_server])
    layer = consumer()
    [channel] = new_channels(layer, 1)
    join(layer, "g", [channel])
    round_trips.count = 0
    for method in (producer.group_add, producer.group_discard):
        with pytest.raises(GroupMembershipError, match="consumer process") as caught:
            method("g", channel)
        assert isinstance(caught.value, RuntimeError)
        assert repr("g") in str(caught.value) and repr(channel) in str(caught.value)
    with pytest.raises(TypeError, match="bad group"):
        producer.group_add("bad group", channel)
    with pytest.raises(TypeError, match="bad channel"):
        producer.group_discard("g", "bad channel")
    assert round_trips.count == 0
    # membership is unchanged: the consumer still gets the group's messages
    producer.group_send("g", {"type": "still.member"})
    assert receive_all(layer, [channel]) == [{"type": "still.member"}]


def test_round_trips(site, redis_shards, round_trips):
    for servers, config in (([redis_shards[0]], {}), ([redis_shards[0]], {"symmetric_encryption_keys": KEYS}),
                            (redis_shards, {})):
        producer, _ = site(servers, **config)
        names = on_both_servers("a.{}".format, per_server=2)
        for name in names:  # opens (and handshakes) one connection per server
            producer.send(name, {"type": "warm"})
        for name in names:
            round_trips.count = 0
            producer.send(name, {"type": "x"})
            assert round_trips.count == 1
            round_trips.count = 0
            producer.group_send(name, {"type": "x"})
            assert round_trips.count == 1
        assert all(b"PUBLISH" in command[0] for command in round_trips.commands[-2:])
        round_trips.count = 0
        with pytest.raises(TypeError, match="msgpack"):
            producer.send("a.0", {"type": "x", "bad": {1, 2}})
        assert round_trips.count == 0


def test_threads_share_one_producer(site, redis_server):
    producer, consumer = site([redis_server])
    layer = consumer()
    [channel] = new_channels(layer, 1)
    until_subscribed([redis_server], [channel])

    def worker(number):
        for index in range(25):
            producer.send(channel, {"type": "t", "w": number, "i": index})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = receive_all(layer, [channel] * 100)
    assert sorted((m["w"], m["i"]) for m in got) == [(w, i) for w in range(4) for i in range(25)]


class SortedJSON(JSONSerializer):
    def as_bytes(self, message, *args, **kwargs):
        return super().as_bytes(message, sort_keys=True)


def test_serializer_registered_with_channels_redis(site, redis_server):
    registry.register_serializer("asgi-redis-test-sorted-json", SortedJSON)
    producer, consumer = site([redis_server], serializer_format="asgi-redis-test-sorted-json",
                              symmetric_encryption_keys=KEYS)
    layer = consumer()
    [channel] = new_channels(layer, 1)
    until_subscribed([redis_server], [channel])
    producer.send(channel, {"z": 1, "type": "custom"})
    assert receive_all(layer, [channel]) == [{"type": "custom", "z": 1}]
    assert SyncPubSubClient(serializer_format="asgi-redis-test-sorted-json")._codec.encode(
        {"z": 1, "type": "t"}) == b'{"type": "t", "z": 1}'


def _send_from_child(producer, channel):
    producer.send(channel, {"type": "from.child"})


def test_fork_after_use(site, redis_server):
    producer, consumer = site([redis_server])
    layer = consumer()
    [channel] = new_channels(layer, 1)
    until_subscribed([redis_server], [channel])
    producer.send(channel, {"type": "from.parent"})  # the pool now holds a connection
    in_forked_child(_send_from_child, producer, channel)
    producer.send(channel, {"type": "parent.again"})
    got = receive_all(layer, [channel] * 3)
    assert [m["type"] for m in got] == ["from.parent", "from.child", "parent.again"]


def test_sentinel_hosts():
    master = RedisProcess()
    monitor = f"sentinel monitor mymaster 127.0.0.1 {master.port} 1"
    sentinel = RedisProcess(sentinel=True, extra_config=[monitor])
    layer = None
    try:
        host = {"sentinels": [("127.0.0.1", sentinel.port)], "master_name": "mymaster"}
        producer, layer = SyncPubSubClient(hosts=[host]), RedisPubSubChannelLayer(hosts=[host])
        [channel] = new_channels(layer, 1)
        join(layer, "s", [channel])
        until_subscribed([master], [channel, "asgi__group__s"])
        assert producer.send(channel, {"type": "via.sentinel"}) == 1
        assert producer.group_send("s", {"type": "group.via.sentinel"}) == 1
        assert receive_all(layer, [channel, channel]) == [{"type": "via.sentinel"}, {"type": "group.via.sentinel"}]
        producer.close()
    finally:
        if layer is not None:
            run(layer.flush())
        sentinel.close()
        master.close()


class PubSubSubclass(RedisPubSubChannelLayer):
    pass


def test_from_settings_picks_the_producer(redis_server):
    url = redis_server.url
    layers = {
        "core": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                 "CONFIG": {"hosts": [url], "prefix": "site", "capacity": 3}},
        # a CONFIG written for the core layer: the pub/sub layer ignores capacity & co, so do we
        "pubsub": {"BACKEND": PUBSUB, "CONFIG": {"hosts": [url], "prefix": "site", "capacity": 3,
                                                 "expiry": 5, "symmetric_encryption_keys": KEYS}},
        "subclass": {"BACKEND": f"{__name__}.PubSubSubclass", "CONFIG": {"hosts": [url]}},
        "memory": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "typo": {"BACKEND": PUBSUB, "CONFIG": {"hots": [url]}},
    }
    for entry_point in (SyncChannelsRedisClient.from_settings, SyncPubSubClient.from_settings):
        core = entry_point("core", channel_layers=layers)
        assert isinstance(core, SyncChannelsRedisClient) and (core.prefix, core.capacity) == ("site", 3)
        pubsub = entry_point("pubsub", channel_layers=layers)
        assert isinstance(pubsub, SyncPubSubClient) and pubsub.prefix == "site" and pubsub._codec.encrypted
        assert isinstance(entry_point("subclass", channel_layers=layers), SyncPubSubClient)
        with pytest.raises(ValueError, match="InMemoryChannelLayer"):
            entry_point("memory", channel_layers=layers)
        with pytest.raises(ValueError, match="'hots'"):
            entry_point("typo", channel_layers=layers)
        with pytest.raises(ValueError, match="'missing'"):
            entry_point("missing", channel_layers=layers)
        core.close()
        pubsub.close()


def notify(producer, channel):
    """Producer code as a project writes it, unaware of the layer behind it."""
    producer.group_send("orders", {"type": "order.created", "id": 7})
    producer.send(channel, {"type": "task.done", "id": 7})


@pytest.mark.parametrize("backend", ["channels_redis.core.RedisChannelLayer", PUBSUB])
def test_switching_layers_needs_no_producer_change(redis_server, backend):
    config = {"hosts": [redis_server.url], "prefix": "switch"}
    producer = SyncChannelsRedisClient.from_settings(
        "default", channel_layers={"default": {"BACKEND": backend, "CONFIG": config}})
    layer = (RedisPubSubChannelLayer if backend == PUBSUB else RedisChannelLayer)(**config)
    try:
        [channel] = new_channels(layer, 1)
        join(layer, "orders", [channel])
        if backend == PUBSUB:
            until_subscribed([redis_server], [channel, "switch__group__orders"])
        notify(producer, channel)
        assert receive_all(layer, [channel, channel]) == [{"type": "order.created", "id": 7},
                                                          {"type": "task.done", "id": 7}]
    finally:
        producer.flush()
        producer.close()
        run(layer.flush())


def test_prefix_outside_channels_name_rules(site, redis_server):
    """new_channel() names start with the prefix, whatever characters it has."""
    producer, consumer = site([redis_server], prefix="my:app ")
    layer = consumer()
    [channel] = new_channels(layer, 1)
    [member] = new_channels(layer, 1)
    join(layer, "g", [member])
    assert channel.startswith("my:app specific.")
    until_subscribed([redis_server], [channel, "my:app __group__g"])
    assert producer.send(channel, {"type": "ok"}) == 1
    assert producer.group_send("g", {"type": "ok"}) == 1
    assert receive_all(layer, [channel, member]) == [{"type": "ok"}] * 2
    for bad in ("my:app bad name", "my:app ", "other:specific.x"):
        with pytest.raises(TypeError, match=repr(bad)):
            producer.send(bad, {"type": "x"})


def test_bad_arguments():
    producer = SyncPubSubClient(hosts=["redis://127.0.0.1:1"])
    with pytest.raises(TypeError, match="bad name!"):
        producer.send("bad name!", {"type": "x"})
    with pytest.raises(TypeError, match="x{99}"):
        producer.send("x" * 100, {"type": "x"})
    with pytest.raises(TypeError, match="not list"):
        producer.send("ok", ["not a dict"])
    with pytest.raises(TypeError, match="group name 'a:b'"):
        producer.group_send("a:b", {"type": "x"})
    with pytest.raises(TypeError, match="json"):
        SyncPubSubClient(serializer_format="json").send("ok", {"type": b"bytes"})
    with pytest.raises(ValueError, match="single string"):
        SyncPubSubClient(hosts="redis://localhost")
    with pytest.raises(ValueError, match="'yaml'"):
        SyncPubSubClient(serializer_format="yaml")
    with pytest.raises(ValueError, match="symmetric_encryption_keys"):
        SyncPubSubClient(symmetric_encryption_keys="one key")
    with pytest.raises(TypeError, match="prefix"):
        SyncPubSubClient(prefix=b"asgi")
    with pytest.raises(TypeError, match="capacity"):
        SyncPubSubClient(capacity=10)  # not an option of this layer


def test_no_silent_retries_and_clear_connection_errors():
    server = RedisProcess()
    producer = SyncPubSubClient(hosts=[server.url])
    try:
        # the layers' at-most-once policy (issue 11: one client factory): a connect
        # may be tried twice, a written PUBLISH never (it is no SAFE_COMMAND)
        from asgi_redis.retry import SAFE_COMMANDS, SafeRetry

        assert isinstance(producer._clients[0].connection_pool.connection_kwargs["retry"], SafeRetry)
        assert "PUBLISH" not in SAFE_COMMANDS
        producer.send("x", {"type": "x"})
        server.kill()
        with pytest.raises(LayerConnectionError, match="127.0.0.1"):
            producer.send("x", {"type": "x"})
        with pytest.raises(ConnectionError):
            producer.group_send("x", {"type": "x"})
    finally:
        server.close()


def test_benchmark_runs(redis_server, capsys):
    figures = run_benchmark(redis_server.url, subscribers=3, calls=20, rounds=1)
    rates = figures["calls_per_second"]
    assert set(rates) >= {"sync group_send", "async_to_sync(group_send)", "sync send", "async_to_sync(send)"}
    assert all(rate > 0 for rate in rates.values())
    # the sync producer reuses its pooled connection; async_to_sync opens one per call
    assert figures["connections_per_call"]["sync group_send"] < 0.5
    assert figures["connections_per_call"]["async_to_sync(group_send)"] >= 0.9
    print(format_report(figures, 3))
