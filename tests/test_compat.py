"""Wire compatibility with asgi_redis 1.4.3: the original, running in its own
interpreter with its own pins, and this layer share one Redis and exchange
messages in both directions."""

import pytest

from asgi_redis import RedisChannelLayer
from asgi_redis.connections import shard_index

from .legacy import LegacyLayer, legacy_python
from .servers import RedisProcess

MESSAGE = {
    "text": "caf\u00e9",
    "raw": b"\xc2\xa3\x00",
    "number": -(2**40),
    "real": 1.5,
    "flag": True,
    "nothing": None,
    "nested": {"list": [1, "two", b"three", {"deep": []}]},
}


@pytest.fixture(scope="module")
def legacy_executable():
    return legacy_python()


@pytest.fixture(scope="module")
def second_server():
    server = RedisProcess()
    yield server
    server.close()


CONFIGS = {
    "plain": {},
    "encrypted": {"symmetric_encryption_keys": ["first", "second"]},
    "sharded": {"shards": 2},
}


@pytest.fixture(params=list(CONFIGS))
def pair(request, redis_server, second_server, legacy_executable):
    """(new layer, legacy layer) configured alike on the same Redis server(s)."""
    config = dict(CONFIGS[request.param])
    shards = config.pop("shards", 1)
    servers = [redis_server, second_server][:shards]
    config.update(expiry=10, group_expiry=60)
    new = RedisChannelLayer(hosts=[s.url for s in servers], **config)
    new.flush()
    old = LegacyLayer(legacy_executable, hosts=[s.address for s in servers], **config)
    yield new, old
    new.flush()
    new.close()


def _received(results):
    return [result for result in results if result != (None, None)]


def test_new_sends_old_receives(pair):
    new, old = pair
    new.send("compat.normal", MESSAGE)
    new.send("reply?abc123", {"n": 1})
    new.send("proc!xyz", {"n": 2})
    new.send("proc!uvw", {"n": 3})
    results = old.run(
        *[("receive", (["compat.normal"],))] * 4,
        ("receive", (["reply?abc123"],)),
        ("receive", (["proc!"],)),
        ("receive", (["proc!"],)),
    )
    assert _received(results[:4]) == [("compat.normal", MESSAGE)]
    assert results[4] == ("reply?abc123", {"n": 1})
    assert results[5:] == [("proc!xyz", {"n": 2}), ("proc!uvw", {"n": 3})]


def test_old_sends_new_receives(pair):
    new, old = pair
    old.run(
        ("send", ("compat.normal", MESSAGE)),
        ("send", ("reply?abc123", {"n": 1})),
        ("send", ("proc!xyz", {"n": 2})),
    )
    assert new.receive(["compat.normal"]) == ("compat.normal", MESSAGE)
    assert new.receive(["reply?abc123"]) == ("reply?abc123", {"n": 1})
    assert new.receive(["proc!"]) == ("proc!xyz", {"n": 2})
    assert new.receive(["compat.normal", "reply?abc123", "proc!"]) == (None, None)


def test_groups_both_ways(pair):
    new, old = pair
    new.group_add("room", "compat.member")
    old.run(("group_add", ("room", "member!one")))
    assert sorted(new.group_channels("room")) == ["compat.member", "member!one"]
    [members] = old.run(("group_channels", ("room",)))
    assert sorted(members) == ["compat.member", "member!one"]

    old.run(("send_group", ("room", {"from": "old"})))
    assert new.receive(["compat.member"]) == ("compat.member", {"from": "old"})
    assert new.receive(["member!"]) == ("member!one", {"from": "old"})

    new.send_group("room", {"from": "new"})
    results = old.run(*[("receive", (["compat.member"],))] * 4, ("receive", (["member!"],)))
    assert _received(results[:4]) == [("compat.member", {"from": "new"})]
    assert results[4] == ("member!one", {"from": "new"})

    new.group_discard("room", "member!one")
    assert old.run(("group_channels", ("room",))) == [["compat.member"]]


def test_statistics_agree(pair):
    new, old = pair
    new.send("stats.chan", {"a": 1})
    old.run(("send", ("stats.chan", {"a": 2})), ("send", ("stats!x", {"a": 3})))
    [old_global, old_channel, old_local] = old.run(
        ("global_statistics", ()),
        ("channel_statistics", ("stats.chan",)),
        ("channel_statistics", ("stats!",)),
    )
    assert new.global_statistics() == old_global == {"messages_count": 3, "channel_full_count": 0}
    ours = new.channel_statistics("stats.chan")
    assert ours["messages_count"] == old_channel["messages_count"] == 2
    assert ours["messages_pending"] == old_channel["messages_pending"] == 2
    assert new.channel_statistics("stats!")["messages_count"] == old_local["messages_count"] == 1


def test_capacity_agrees(redis_server, legacy_executable):
    new = RedisChannelLayer(hosts=[redis_server.url], capacity=2, expiry=10)
    new.flush()
    old = LegacyLayer(legacy_executable, hosts=[redis_server.address], capacity=2, expiry=10)
    try:
        new.send("cap.shared", {"n": 1})
        results = old.run(("send", ("cap.shared", {"n": 2})), ("send", ("cap.shared", {"n": 3})))
        assert results == [None, ("raised", "ChannelFull")]
        with pytest.raises(new.ChannelFull):
            new.send("cap.shared", {"n": 4})
        assert new.global_statistics()["channel_full_count"] == 2
    finally:
        new.flush()
        new.close()


NAMES = ["daphne.response.abc!", "http.request", "reply?xYz", "websocket.connect", "g", "group-1", ""]


@pytest.mark.parametrize("shard_count", [1, 2, 3, 5])
def test_same_shards_as_legacy(legacy_executable, shard_count):
    hosts = [("127.0.0.1", 1000 + n) for n in range(shard_count)]  # hashing opens no connection
    old = LegacyLayer(legacy_executable, hosts=hosts)
    names = NAMES + [f"chat.{n}?{n * 7919}" for n in range(300)]
    legacy = old.run(*[("consistent_hash", (name,)) for name in names])
    assert [shard_index(name, shard_count) for name in names] == legacy


def test_compact_layout_and_143_never_mix(redis_server, legacy_executable):
    """layout="compact" is not 1.4.3's: neither side sees the other's messages,
    groups or statistics (so nothing is misread); switching is a cut-over."""
    compact = RedisChannelLayer(hosts=[redis_server.url], expiry=10, layout="compact")
    compact.flush()
    old = LegacyLayer(legacy_executable, hosts=[redis_server.address], expiry=10)
    try:
        compact.send("mix.normal", {"from": "compact"})
        compact.send("mix!a", {"from": "compact"})
        compact.group_add("mixroom", "mix.member")
        results = old.run(
            ("receive", (["mix.normal"],)), ("receive", (["mix!"],)),
            ("group_channels", ("mixroom",)), ("global_statistics", ()),
            ("send", ("mix.normal", {"from": "1.4.3"})), ("group_add", ("mixroom", "old.member")),
        )
        assert results[:4] == [(None, None), (None, None), [], {"messages_count": 0, "channel_full_count": 0}]
        assert compact.receive(["mix.normal"]) == ("mix.normal", {"from": "compact"})
        assert compact.receive(["mix.normal"]) == (None, None)  # 1.4.3's message is not read as ours
        assert compact.group_channels("mixroom") == ["mix.member"]
        assert compact.global_statistics()["messages_count"] == 2
        compact.flush()  # leaves 1.4.3's keys alone
        assert old.run(("receive", (["mix.normal"],))) == [("mix.normal", {"from": "1.4.3"})]
    finally:
        old.run(("flush", ()))
        compact.flush()
        compact.close()
