"""RedisChannelLayer against a real Redis: the 1.4.3 data layout, round trips,
validation, capacity, statistics and configuration."""

import base64
import hashlib
import re
import threading
import time

import msgpack
import pytest
from cryptography.fernet import Fernet

from asgi_redis import LayerConnectionError, RedisChannelLayer

from .helpers import check_send_and_receive_cost_one_round_trip_each
from .servers import RedisProcess


def _body(raw, queue_key, position=0):
    return raw.get(raw.lindex(queue_key, position))


# -- the wire layout of 1.4.3, inspected key by key ---------------------------


def test_send_layout(make_layer, raw):
    layer = make_layer(expiry=30)
    layer.send("http.request", {"path": "/", "body": b"\x00\xff"})
    assert raw.type("asgi:http.request") == b"list"
    [body_key] = raw.lrange("asgi:http.request", 0, -1)
    assert re.fullmatch(rb"asgi:[0-9a-f]{32}", body_key)
    assert msgpack.unpackb(raw.get(body_key), raw=False) == {"path": "/", "body": b"\x00\xff"}
    assert 29 <= raw.ttl(body_key) <= 30
    assert 30 <= raw.ttl("asgi:http.request") <= 31
    assert raw.get("asgi-meta:http.request:messages_count") == b"1"
    assert 3599 <= raw.ttl("asgi-meta:http.request:messages_count") <= 3600
    assert raw.get("asgi-meta:#global#:messages_count") == b"1"
    assert 86399 <= raw.ttl("asgi-meta:#global#:messages_count") <= 86400
    assert raw.exists("asgi-meta:http.request:channel_full_count") == 0


def test_process_channel_layout(layer, raw):
    layer.send("daphne.response.ab!cd", {"status": 200})
    assert raw.exists("asgi:daphne.response.ab!cd") == 0
    body = msgpack.unpackb(_body(raw, "asgi:daphne.response.ab!"), raw=False)
    assert body == {"status": 200, "__asgi_channel__": "daphne.response.ab!cd"}
    assert raw.get("asgi-meta:daphne.response.ab!:messages_count") == b"1"
    assert layer.receive(["daphne.response.ab!"]) == ("daphne.response.ab!cd", {"status": 200})


def test_receive_deletes_body(layer, raw):
    layer.send("chan", {"a": 1})
    [body_key] = raw.lrange("asgi:chan", 0, -1)
    assert layer.receive(["chan"]) == ("chan", {"a": 1})
    assert raw.exists(body_key, "asgi:chan") == 0


def test_group_layout(make_layer, raw):
    layer = make_layer(group_expiry=300)
    before = time.time()
    layer.group_add("room", "chan!x")
    assert raw.type("asgi::group:room") == b"zset"
    [(member, score)] = raw.zrange("asgi::group:room", 0, -1, withscores=True)
    assert member == b"chan!x" and before - 1 <= score <= time.time() + 1
    assert 299 <= raw.ttl("asgi::group:room") <= 300
    layer.group_discard("room", "chan!x")
    layer.group_discard("room", "never-a-member")
    assert raw.zcard("asgi::group:room") == 0


def test_encrypted_layout(make_layer, raw):
    layer = make_layer(symmetric_encryption_keys=["s3cret"])
    layer.send("chan", {"a": "b"})
    token = _body(raw, "asgi:chan")
    key = base64.urlsafe_b64encode(hashlib.sha256(b"s3cret").digest())
    assert msgpack.unpackb(Fernet(key).decrypt(token), raw=False) == {"a": "b"}


def test_key_rotation(make_layer):
    old = make_layer(symmetric_encryption_keys=["old"])
    rotating = make_layer(symmetric_encryption_keys=["new", "old"])
    new_only = make_layer(symmetric_encryption_keys=["new"])
    old.send("chan", {"n": 1})
    assert rotating.receive(["chan"]) == ("chan", {"n": 1})
    rotating.send("chan", {"n": 2})
    assert new_only.receive(["chan"]) == ("chan", {"n": 2})
    old.send("chan", {"n": 3})
    assert new_only.receive(["chan"]) == (None, None)  # undecryptable: dropped, counted
    assert new_only.undecodable_count == 1


def test_custom_prefixes(make_layer, raw):
    layer = make_layer(prefix="myapp:", stats_prefix="myapp-stats:")
    layer.send("chan", {})
    layer.group_add("g", "chan")
    assert raw.exists("myapp:chan", "myapp::group:g", "myapp-stats:chan:messages_count") == 3
    layer.flush()
    assert raw.keys("myapp*") == []


# -- round trips --------------------------------------------------------------


def test_round_trips_single_shard(layer, round_trips):
    layer.send("warm", {})  # connect and load scripts outside the count
    layer.receive(["warm"])
    layer.group_add("warm", "warm")
    layer.send_group("warm", {})

    check_send_and_receive_cost_one_round_trip_each(layer, round_trips, "chan")
    layer.send("chan", {"a": 2})
    round_trips.count = 0
    assert layer.receive(["chan", "other!"], block=True) == ("chan", {"a": 2})
    assert round_trips.count <= 2
    round_trips.count = 0
    layer.group_add("g", "chan")
    assert round_trips.count == 1
    for n in range(50):
        layer.group_add("g", f"member{n}")
        layer.group_add("g", f"proc!{n}")
    round_trips.count = 0
    layer.send_group("g", {"hello": "all"})
    assert round_trips.count == 2


def test_round_trips_two_shards(redis_shards, round_trips):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards], expiry=5)
    layer.flush()
    try:
        for n in range(40):
            layer.group_add("g", f"member{n}")
            layer.group_add("g", f"reply?{n}")
        layer.send_group("g", {})  # load the scripts on both shards outside the count
        layer.receive(["nothing"])
        layer.flush()
        for n in range(40):
            layer.group_add("g", f"member{n}")
            layer.group_add("g", f"reply?{n}")
        round_trips.count = 0
        layer.send_group("g", {"n": 1})
        assert round_trips.count == 3  # group read + one script per shard
        round_trips.count = 0
        assert layer.receive(["nothing"]) == (None, None)
        assert round_trips.count == 2  # one pop.lua per shard
    finally:
        layer.flush()
        layer.close()


def test_flush_uses_scan_not_keys(layer, raw, round_trips):
    for n in range(2500):
        raw.set(f"asgi:junk{n}", 1)
    raw.set("unrelated", 1)
    raw.set("asgi", 1)  # no colon: not ours
    layer.flush()
    sent = b" ".join(part for command in round_trips.commands for part in _parts(command))
    assert b"SCAN" in sent and b"KEYS" not in sent
    assert sorted(raw.keys("*")) == [b"asgi", b"unrelated"]
    raw.delete("asgi", "unrelated")


def _parts(command):
    return command if isinstance(command, list) else [command]


# -- capacity ---------------------------------------------------------------


def test_channel_full_and_counters(make_layer, raw):
    layer = make_layer(capacity=2, channel_capacity={"big*": 3})
    layer.send("chan", {})
    layer.send("chan", {})
    with pytest.raises(layer.ChannelFull, match="'chan' is at its capacity of 2"):
        layer.send("chan", {})
    for _ in range(3):
        layer.send("bigger", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("bigger", {})
    assert raw.llen("asgi:chan") == 2
    assert layer.global_statistics() == {"messages_count": 5, "channel_full_count": 2}
    stats = layer.channel_statistics("chan")
    assert stats["messages_count"] == 2 and stats["channel_full_count"] == 1
    assert stats["messages_pending"] == 2


def test_process_channels_share_capacity(make_layer):
    layer = make_layer(capacity=2)
    layer.send("proc!a", {})
    layer.send("proc!b", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("proc!c", {})


def test_expired_entries_do_not_count_against_capacity(make_layer, raw):
    layer = make_layer(capacity=2, expiry=1)
    layer.send("chan", {"n": 1})
    layer.send("chan", {"n": 2})
    time.sleep(1.1)  # bodies expire (1 s); the queue itself lives 1 s longer
    assert raw.llen("asgi:chan") == 2
    layer.send("chan", {"n": 3})
    assert raw.llen("asgi:chan") == 1
    assert layer.receive(["chan"]) == ("chan", {"n": 3})


def _command_calls(client, *names):
    stats = client.info("commandstats")
    return [stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names]


@pytest.mark.parametrize("capacity", [10, 300])
def test_refused_send_work_does_not_grow_with_capacity(make_layer, raw, capacity):
    # 2.0 rescanned the whole queue (LRANGE, then EXISTS per entry) on every
    # refused send; counted in commands, not time: a busy machine cannot lie about them
    layer = make_layer(capacity=capacity, expiry=60)
    for n in range(capacity):
        layer.send("full", {"n": n})
    raw.config_resetstat()
    for _ in range(20):
        with pytest.raises(layer.ChannelFull):
            layer.send("full", {})
    exists, lrange, lindex = _command_calls(raw, "exists", "lrange", "lindex")
    assert (exists, lrange, lindex) == (20, 0, 20)  # one look at the head entry each
    assert raw.llen("asgi:full") == capacity


def test_dead_entries_are_trimmed_in_bounded_steps(make_layer, raw):
    layer = make_layer(capacity=150, expiry=1)
    for n in range(150):
        layer.send("chan", {"n": n})
    time.sleep(1.1)  # every body expired; the queue key lives on 1 s more
    raw.config_resetstat()
    layer.send("chan", {"n": "new"})  # needs room for one: drops 1 + at most 100 more
    assert _command_calls(raw, "lpop") == [101]
    assert raw.llen("asgi:chan") == 150 - 101 + 1
    layer.send("chan", {"n": "newer"})  # room now: no trimming on an accepted send
    assert _command_calls(raw, "lpop") == [101]
    assert layer.receive(["chan"]) == ("chan", {"n": "new"})


def test_sharded_capacity_counts_per_shard(redis_shards):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards], capacity=2)
    layer.flush()
    try:
        for _ in range(4):  # normal channels spread: 2 per shard
            layer.send("spread", {})
        with pytest.raises(layer.ChannelFull):
            layer.send("spread", {})
        layer.send("one!a", {})
        layer.send("one!b", {})  # ! channels live on one shard: 2 in all
        with pytest.raises(layer.ChannelFull):
            layer.send("one!c", {})
    finally:
        layer.flush()
        layer.close()


def test_send_group_skips_full_members(make_layer):
    layer = make_layer(capacity=1)
    layer.group_add("g", "full")
    layer.group_add("g", "free")
    layer.send("full", {"first": True})
    layer.send_group("g", {"group": True})
    assert layer.receive(["full"]) == ("full", {"first": True})
    assert layer.receive(["full"]) == (None, None)
    assert layer.receive(["free"]) == ("free", {"group": True})
    assert layer.channel_statistics("full")["channel_full_count"] == 1


# -- receive across shards ------------------------------------------------------


def test_non_blocking_receive_finds_any_shard(redis_shards):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards])
    layer.flush()
    try:
        for n in range(6):
            layer.send("spread", {"n": n})
        assert {redis_shards[0].client().llen("asgi:spread"), redis_shards[1].client().llen("asgi:spread")} == {3}
        got = [layer.receive(["spread"])[1]["n"] for _ in range(6)]
        assert sorted(got) == list(range(6))
        assert layer.receive(["spread"]) == (None, None)
    finally:
        layer.flush()
        layer.close()


def test_blocking_receive_on_two_shards_does_not_stall(redis_shards):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards])
    layer.flush()
    latencies, errors = [], []

    def receiver():
        try:
            for _ in range(8):
                channel, message = layer.receive(["sparse"], block=True)
                latencies.append(time.monotonic() - message["sent"])
        except Exception as error:  # surfaced below
            errors.append(error)

    thread = threading.Thread(target=receiver)
    thread.start()
    try:
        for _ in range(8):  # round robin: alternate shards
            time.sleep(0.15)
            layer.send("sparse", {"sent": time.monotonic()})
        thread.join(20)
    finally:
        layer.flush()
        layer.close()
    assert not errors and len(latencies) == 8
    latencies.sort()
    print(f"\nsharded blocking receive latency: p50 {latencies[4] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    # 1.4.3 waited up to 5 s on the other shard, and waiting on each shard in
    # turn costs ~100 ms (Redis's hz tick); the worst case is left generous for
    # a loaded machine
    assert latencies[4] < 0.05
    assert latencies[-1] < 1.0


def test_blocking_receive_times_out(make_layer):
    layer = make_layer()
    layer.blpop_timeout = 0.3
    started = time.monotonic()
    assert layer.receive(["quiet", "quiet?x", "quiet!"], block=True) == (None, None)
    assert 0.25 < time.monotonic() - started < 3


def test_blocking_receive_skips_expired_bodies(make_layer, raw):
    layer = make_layer()
    raw.rpush("asgi:chan", "asgi:gone")  # a queued key whose body expired
    layer.send("chan", {"ok": 1})
    assert layer.receive(["chan"], block=True) == ("chan", {"ok": 1})


def test_empty_receive_and_deprecated_alias(layer):
    assert layer.receive([]) == (None, None)
    layer.send("chan", {"a": 1})
    with pytest.warns(DeprecationWarning):
        assert layer.receive_many(["chan"]) == ("chan", {"a": 1})


# -- statistics ----------------------------------------------------------------


def test_max_age_never_exceeds_expiry(make_layer, raw):
    layer = make_layer(expiry=1)
    layer.send("chan", {})
    time.sleep(1.2)  # body gone, queue entry still there
    stats = layer.channel_statistics("chan")
    assert 0 <= stats["messages_max_age"] <= 1
    raw.delete("asgi:chan")
    layer2 = make_layer(expiry=10)
    layer2.send("aged", {})
    raw.pexpire(raw.lindex("asgi:aged", 0), 6500)  # as if sent 3.5 s ago
    assert layer2.channel_statistics("aged")["messages_max_age"] == 3


def test_statistics_over_shards(redis_shards):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards], capacity=1)
    layer.flush()
    try:
        layer.send("spread", {})
        layer.send("spread", {})
        with pytest.raises(layer.ChannelFull):
            layer.send("spread", {})
        assert layer.global_statistics() == {"messages_count": 2, "channel_full_count": 1}
        stats = layer.channel_statistics("spread")
        assert stats["messages_count"] == 2 and stats["messages_pending"] == 2
    finally:
        layer.flush()
        layer.close()


# -- validation: clear errors, nothing written ----------------------------------


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda layer: layer.send("bad name", {}), TypeError, "'bad name'"),
        (lambda layer: layer.send("chan?", {}), TypeError, "'chan?'"),
        (lambda layer: layer.send("chan", "text"), TypeError, "must be a dict, not str"),
        (lambda layer: layer.send("chan", {"a": {1, 2}}), TypeError, "message['a'] holds a set"),
        (lambda layer: layer.send("chan", {"a": 2**64}), ValueError, "message['a'] integer"),
        (lambda layer: layer.send("chan", {1: "a"}), TypeError, "dict key 1 is int"),
        (lambda layer: layer.send("chan", {"__asgi_channel__": "x"}), ValueError, "reserved"),
        (lambda layer: layer.send(b"chan", {}), TypeError, "must be a str, not bytes"),
        (lambda layer: layer.receive(["chan!x"]), TypeError, "'chan!'"),
        (lambda layer: layer.receive("chan"), TypeError, "list of channel names"),
        (lambda layer: layer.new_channel("chan!"), TypeError, "'chan!'"),
        (lambda layer: layer.new_channel("chan"), TypeError, "'chan'"),
        (lambda layer: layer.group_add("bad group", "chan"), TypeError, "'bad group'"),
        (lambda layer: layer.group_add("g", "bad chan"), TypeError, "'bad chan'"),
        (lambda layer: layer.send_group("g", {"a": object()}), TypeError, "message['a'] holds a object"),
        (lambda layer: layer.channel_statistics("x y"), TypeError, "'x y'"),
    ],
)
def test_bad_calls_raise_clearly_and_write_nothing(layer, raw, call, error, words):
    layer.group_add("g", "member")
    before = sorted(raw.keys("*"))
    with pytest.raises(error) as info:
        call(layer)
    assert words in str(info.value)
    assert sorted(raw.keys("*")) == before


def test_message_too_large(make_layer, raw):
    layer = make_layer()
    one_mb_json = {"text": "x" * (1024 * 1024 - 20)}
    layer.send("big", one_mb_json)
    assert layer.receive(["big"]) == ("big", one_mb_json)
    layer.group_add("g", "big")
    with pytest.raises(layer.MessageTooLarge, match="max_message_size"):
        layer.send("big", {"blob": b"\0" * (64 * 1024 * 1024)})
    with pytest.raises(layer.MessageTooLarge):
        layer.send_group("g", {"blob": b"\0" * (64 * 1024 * 1024)})
    small = make_layer(max_message_size=100)
    with pytest.raises(small.MessageTooLarge, match="over the max_message_size of 100"):
        small.send("chan", {"a": "x" * 200})
    assert raw.llen("asgi:big") == 0 and raw.llen("asgi:chan") == 0


def test_new_channel(layer, raw):
    name = layer.new_channel("reply.to?")
    assert re.fullmatch(r"reply\.to\?[A-Za-z]{12}", name)
    assert name != layer.new_channel("reply.to?")
    assert raw.keys("asgi*") == []


def test_exceptions_and_attributes(make_layer):
    import asgi_redis

    layer = make_layer(expiry=7, group_expiry=9, capacity=11)
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (7, 9, 11)
    assert layer.ChannelFull is asgi_redis.ChannelFull
    assert layer.MessageTooLarge is asgi_redis.MessageTooLarge
    assert issubclass(asgi_redis.ChannelFull, asgi_redis.ChannelLayerError)
    assert {"groups", "flush", "statistics"} <= set(layer.extensions)


# -- configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    "config, words",
    [
        ({"hosts": "redis://localhost"}, "not a single string"),
        ({"hosts": [("localhost",)]}, "('localhost',)"),
        ({"hosts": ["localhost:6379"]}, "'localhost:6379' is not a redis URL"),
        ({"expiry": 0}, "expiry must be a positive integer, not 0"),
        ({"expiry": "60"}, "expiry must be a positive integer, not '60'"),
        ({"group_expiry": -1}, "group_expiry"),
        ({"capacity": 0}, "capacity"),
        ({"channel_capacity": {"a": "x"}}, "channel_capacity['a']"),
        ({"symmetric_encryption_keys": "key"}, "must be a list of keys, not a single str"),
        ({"symmetric_encryption_keys": []}, "empty list"),
        ({"symmetric_encryption_keys": [5]}, "not int"),
        ({"prefix": ""}, "prefix must be a non-empty str"),
        ({"prefix": "a:", "stats_prefix": "a:"}, "overlap"),
        ({"connection_kwargs": {"decode_responses": True}}, "decode_responses"),
        ({"connection_kwargs": {"no_such_option": 1}}, "no_such_option"),
        ({"connection_kwargs": "x"}, "connection_kwargs must be a dict"),
        ({"max_message_size": 0}, "max_message_size"),
    ],
)
def test_bad_config(config, words):
    with pytest.raises(ValueError) as info:
        RedisChannelLayer(**config)
    assert words in str(info.value)


def test_default_host_is_localhost():
    layer = RedisChannelLayer()
    kwargs = layer.shards.client(0).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"]) == ("localhost", 6379)


def test_unix_socket_and_connection_kwargs():
    server = RedisProcess(unix_socket=True, extra_config=["requirepass hunter2"])
    try:
        layer = RedisChannelLayer(
            hosts=[f"unix://{server.unix_socket}"],
            connection_kwargs={"password": "hunter2", "socket_timeout": 3, "socket_connect_timeout": 2},
        )
        layer.send("chan", {"over": "unix"})
        assert layer.receive(["chan"], block=True) == ("chan", {"over": "unix"})
        pool_kwargs = layer.shards.client(0).connection_pool.connection_kwargs
        assert pool_kwargs["socket_timeout"] == 3
        wrong = RedisChannelLayer(hosts=[f"unix://{server.unix_socket}"], connection_kwargs={"password": "nope"})
        with pytest.raises(LayerConnectionError, match=r"send failed: Redis unix://.*redis.sock"):
            wrong.send("chan", {})
    finally:
        server.close()


def test_unreachable_server_names_the_shard():
    layer = RedisChannelLayer(hosts=[("127.0.0.1", 1)], connection_kwargs={"socket_connect_timeout": 1})
    with pytest.raises(LayerConnectionError, match="send failed: Redis 127.0.0.1:1 is unreachable"):
        layer.send("chan", {})
    with pytest.raises(ConnectionError):  # also a builtin ConnectionError
        layer.receive(["chan"])


def test_send_group_to_many_sockets_of_one_process(make_layer, raw):
    layer = make_layer(capacity=3)
    for n in range(5):
        layer.group_add("room", f"daphne.response.p1!{n}")
    layer.group_add("room", "daphne.response.p2!only")
    layer.send_group("room", {"text": "hi"})
    assert raw.llen("asgi:daphne.response.p1!") == 3  # the run was cut at capacity
    received = [layer.receive(["daphne.response.p1!"]) for _ in range(4)]
    channels = [channel for channel, _ in received[:3]]
    assert len(set(channels)) == 3 and set(channels) <= {f"daphne.response.p1!{n}" for n in range(5)}
    assert all(message == {"text": "hi"} for _, message in received[:3]) and received[3] == (None, None)
    assert layer.receive(["daphne.response.p2!"]) == ("daphne.response.p2!only", {"text": "hi"})
    stats = layer.channel_statistics("daphne.response.p1!")
    assert (stats["messages_count"], stats["channel_full_count"]) == (3, 2)
    assert layer.global_statistics() == {"messages_count": 4, "channel_full_count": 2}


def test_send_group_in_chunks_keeps_every_member(make_layer, monkeypatch):
    from asgi_redis.layouts import classic

    monkeypatch.setattr(classic, "GROUP_CHUNK", 7)  # several script calls in one pipeline
    layer = make_layer(symmetric_encryption_keys=["k"], capacity=50)
    members = [f"proc!{n}" for n in range(20)] + [f"plain{n}" for n in range(5)]
    for member in members:
        layer.group_add("g", member)
    layer.send_group("g", {"n": 1})
    got = {layer.receive(["proc!"])[0] for _ in range(20)}
    assert got == set(members[:20])
    assert all(layer.receive([f"plain{n}"]) == (f"plain{n}", {"n": 1}) for n in range(5))


def test_a_subclass_builds_its_own_layout_once(redis_server):
    built = []

    class Custom(RedisChannelLayer):
        def _create_layout(self, name, settings):
            layout = super()._create_layout(name, settings)
            built.append((name, layout))
            return layout

    layer = Custom(hosts=[redis_server.url], prefix="layouthook:", layout="compact")
    try:
        assert built == [("compact", layer.layout)]
        assert layer.layout.name == "compact" and layer._receive_port.layout is layer.layout
    finally:
        layer.close()


def test_remembered_receive_targets_stay_bounded_and_unshared(layer):
    # a worker receives on one list all its life (remembered); single-use ? names must not grow it
    for n in range(3000):
        layer.receive([f"reply?{n:05d}"])
    assert 0 < len(layer._targets_cache) <= 1024
    first = layer._receive_targets(["a", "b?x"])
    first[0][2].append(b"mutated by a caller")
    assert b"mutated by a caller" not in layer._receive_targets(["a", "b?x"])[0][2]
