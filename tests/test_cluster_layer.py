"""RedisClusterChannelLayer against a real loopback Redis Cluster (tests/cluster.py):
conformance, configuration, the spread of normal channels, round trips counted at
the socket, flush and statistics over every master, the asyncio extension."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from asgi_redis import ChannelFull, LayerConnectionError, RedisClusterChannelLayer
from asgi_redis.cluster import NotACluster, key_slot

from .helpers import built_layers
from .layer_conformance import LayerConformance
from .servers import RedisProcess


@pytest.fixture
def cluster(redis_cluster):
    return redis_cluster


@pytest.fixture
def make_layer(redis_cluster):
    yield from built_layers(RedisClusterChannelLayer, hosts=[redis_cluster.url], expiry=1, group_expiry=2)


def no_rescue(layer):
    """Turn off the occasional sweep of every bucket (one write per master), for exact counts."""
    layer.rescue_interval = float("inf")
    layer._last_rescue = time.monotonic()
    return layer


def owner_port(cluster, key):
    return cluster.master_of_slot(key_slot(key)).port


# -- conformance: asgiref 1.1.2's suite -------------------------------------------------------


class TestClusterPlain(LayerConformance):
    layer_class = RedisClusterChannelLayer

    @staticmethod
    def layer_config(redis_cluster):
        return {"hosts": [redis_cluster.url]}


class TestClusterEncrypted(LayerConformance):
    layer_class = RedisClusterChannelLayer

    @staticmethod
    def layer_config(redis_cluster):
        return {"hosts": [redis_cluster.url], "symmetric_encryption_keys": ["new key", "old key"]}


class TestClusterCapacityMap(LayerConformance):
    """The default capacity is large; the map brings every test channel down to 5."""

    layer_class = RedisClusterChannelLayer

    @staticmethod
    def layer_config(redis_cluster):
        return {"hosts": [redis_cluster.url], "capacity": 100,
                "channel_capacity": {re.compile(r"^cap_"): 5, "capp!": 5, "*": 5}}


# -- configuration ---------------------------------------------------------------------------


def test_configuration_errors_are_value_errors(cluster):
    for config, words in [
        ({"hosts": [cluster.url + "/2"]}, "database 2"),
        ({"hosts": [cluster.url], "connection_kwargs": {"db": 1}}, "only database 0"),
        ({"hosts": ["unix:///tmp/x.sock"]}, "unix socket"),
        ({"hosts": cluster.url}, "not a single string"),
        ({"hosts": [cluster.url], "buckets": 0}, "buckets must be"),
        ({"hosts": [cluster.url], "prefix": "a{b"}, "brace"),
        ({"hosts": [cluster.url], "expiry": 0}, "expiry"),
        ({"hosts": [cluster.url], "layout": "classic"}, "must be 'compact' on a cluster"),
    ]:
        with pytest.raises(ValueError, match=words):
            RedisClusterChannelLayer(**config)


def test_a_standalone_server_is_a_value_error():
    server = RedisProcess()
    try:
        with pytest.raises(NotACluster, match="not in cluster mode"):
            RedisClusterChannelLayer(hosts=[server.url])
    finally:
        server.close()


def test_startup_node_as_pair_and_one_reachable_is_enough(cluster, make_layer):
    layer = make_layer(hosts=[("127.0.0.1", 1), ("127.0.0.1", cluster.nodes[4].port)])
    layer.send("pair.works", {"n": 1})
    assert layer.receive(["pair.works"]) == ("pair.works", {"n": 1})
    assert len(layer.router.masters()) == 3
    assert "RedisClusterChannelLayer masters=" in repr(layer)


# -- where things live -------------------------------------------------------------------------


def test_normal_channels_are_spread_over_every_master(cluster, make_layer):
    layer = make_layer()
    names = [f"spread{n}" for n in range(60)]
    owners = {owner_port(cluster, layer.layout.queue_key(name)) for name in names}
    assert owners == {node.port for node in cluster.masters()}
    for name in names:
        layer.send(name, {"name": name})
    for master in cluster.masters():
        with master.client() as client:
            assert client.dbsize() > 0
    got = sorted(layer.receive(names)[1]["name"] for _ in names)
    assert got == sorted(names)
    assert layer.receive(names) == (None, None)


def test_every_key_of_a_call_shares_a_slot(cluster, make_layer, round_trips):
    # the router refuses a call whose keys span slots (ValueError) before sending it;
    # a whole session of operations goes through without one
    layer = make_layer()
    layer.send("slots.normal", {})
    layer.send("slots!a", {})
    layer.group_add("slots.group", "slots!a")
    layer.group_add("slots.group", "slots.normal")
    layer.send_group("slots.group", {"g": 1})
    assert layer.receive(["slots!"])[0] == "slots!a"
    assert layer.channel_statistics("slots.normal")["messages_count"] == 2
    assert layer.global_statistics()["messages_count"] >= 4
    assert not any(b"CROSSSLOT" in command for command in round_trips.commands)


# -- round trips, counted at the socket --------------------------------------------------------


def _warm(layer, names):
    for name in names:
        layer.send(name, {})
    while layer.receive(names)[0] is not None:
        pass
    layer.group_add("warm", names[0])
    layer.send_group("warm", {})
    layer.receive(names)


def test_round_trips(cluster, make_layer, round_trips):
    layer = no_rescue(make_layer())
    normal = [f"trip{n}" for n in range(12)]
    _warm(layer, normal + ["trip!", "trip?x"])

    round_trips.count = 0
    layer.send("trip!a", {"x": 1})
    assert round_trips.count == 1
    round_trips.count = 0
    assert layer.receive(["trip!"]) == ("trip!a", {"x": 1})
    assert round_trips.count == 1

    layer.send("trip?x", {"y": 1})
    round_trips.count = 0
    assert layer.receive(["trip?x"], block=True) == ("trip?x", {"y": 1})
    assert round_trips.count == 1

    round_trips.count = 0
    layer.send("trip3", {})
    assert round_trips.count == 1
    layer.receive(normal)
    masters_of_normal = {owner_port(cluster, layer.layout.queue_key(name)) for name in normal}
    round_trips.count = 0
    assert layer.receive(normal) == (None, None)
    assert round_trips.count == len(masters_of_normal) <= 3  # one pop per master

    round_trips.count = 0
    layer.group_add("trip.group", "trip!a")
    assert round_trips.count == 1


def test_send_group_costs_one_read_plus_one_write_per_master(cluster, make_layer, round_trips):
    layer = no_rescue(make_layer(group_expiry=60))
    processes = [f"proc{n}!" for n in range(4)]
    members = [f"{process}{m}" for process in processes for m in range(250)]
    for channel in members:
        layer.group_add("big", channel)
    _warm(layer, processes)
    layer.group_channels("big")  # the members script is loaded on the group's master
    masters = {owner_port(cluster, layer.layout.queue_key(process)) for process in processes}
    round_trips.count = 0
    started = time.perf_counter()
    layer.send_group("big", {"text": "hello"})
    elapsed = time.perf_counter() - started
    assert round_trips.count == 1 + len(masters)
    print(f"\nsend_group to 1,000 members over 4 processes on {len(masters)} masters: {elapsed * 1000:.1f} ms")
    received = 0
    for process in processes:
        while layer.receive([process])[0] is not None:
            received += 1
    assert received == 1000


def test_flush_and_statistics_walk_every_master_with_scan(cluster, make_layer, round_trips):
    layer = make_layer()
    names = [f"walk{n}" for n in range(30)]
    for name in names:
        layer.send(name, {})
    layer.send("walk!x", {})
    assert layer.global_statistics()["messages_count"] == 31
    assert sum(layer.channel_statistics(name)["messages_pending"] for name in names) == 30
    counts = layer.flush_counts()
    assert len(counts) == 3 and sum(counts.values()) > 31
    commands = b"".join(b"".join(bytes(part) for part in command) if isinstance(command, list) else bytes(command)
                        for command in round_trips.commands)
    assert b"SCAN" in commands and b"\r\nKEYS\r\n" not in commands
    for master in cluster.masters():
        with master.client() as client:
            assert client.keys("asgi*") == []
    assert layer.global_statistics()["messages_count"] == 0


def test_capacity_is_per_channel(make_layer):
    layer = make_layer(capacity=3)
    for number in range(3):
        layer.send("cap.normal", {"n": number})
    with pytest.raises(ChannelFull):
        layer.send("cap.normal", {"n": 3})
    assert [layer.receive(["cap.normal"])[1]["n"] for _ in range(3)] == [0, 1, 2]  # order kept


def test_messages_stranded_in_another_bucket_are_found(cluster, make_layer):
    # a resharding may change a channel's bucket; what was sent to the old one is
    # found by the occasional sweep of every bucket
    layer = make_layer()
    name = "stranded"
    current = layer.layout.bucket_of(name)
    other = next(tag for tag in layer.layout.bucket_tags if tag != current)
    layer.layout._bucket.tag = other
    try:
        layer.send(name, {"where": "old bucket"})
    finally:
        layer.layout._bucket.tag = None
    layer._last_rescue = 0.0
    assert layer.receive([name]) == (name, {"where": "old bucket"})


# -- blocking receive, asyncio ----------------------------------------------------------------


def test_a_blocked_receive_wakes_for_a_message_on_any_master(cluster, make_layer):
    layer = no_rescue(make_layer())
    sender = make_layer()
    names = [f"wake{n}" for n in range(30)]
    by_master = {}
    for name in names:
        by_master.setdefault(owner_port(cluster, layer.layout.queue_key(name)), name)
    assert len(by_master) == 3
    for port, name in sorted(by_master.items()):
        result = []

        def receive(into=result):
            into.append((layer.receive(names, block=True), time.monotonic()))

        thread = threading.Thread(target=receive)
        thread.start()
        time.sleep(0.2)  # the receiver is blocked by now (not needed for correctness)
        sent = time.monotonic()
        sender.send(name, {"port": port})
        thread.join(10)
        (channel, message), woke = result[0]
        assert (channel, message) == (name, {"port": port})
        assert woke - sent < 2.0  # well before the 5 s wait ends: the wait spans every master
        print(f"\nwoke {1000 * (woke - sent):.1f} ms after a send to master {port}")


def test_receive_async(cluster, make_layer):
    layer = make_layer()
    layer.extension_receive_timeout = 0.3
    layer.send("async!a", {"n": 1})
    layer.send("async.normal", {"n": 2})

    async def run():
        first = await layer.receive_async(["async!"])
        second = await layer.receive_async(["async.normal", "async.other"])
        third = await layer.receive_async(["async.normal"])
        await layer.close_async()
        return first, second, third

    assert asyncio.run(run()) == (("async!a", {"n": 1}), ("async.normal", {"n": 2}), (None, None))


def test_unreachable_cluster_is_a_layer_connection_error():
    from .cluster import free_cluster_port


    layer = RedisClusterChannelLayer(hosts=[f"redis://127.0.0.1:{free_cluster_port()}"])
    try:
        with pytest.raises(LayerConnectionError, match="no Redis Cluster node answered"):
            layer.send("x", {})
    finally:
        layer.close()


def test_the_cluster_layout_is_the_only_one_built(make_layer, monkeypatch):
    from asgi_redis.cluster.layout import ClusterLayout
    from asgi_redis.layouts.compact import CompactLayout

    built = []
    original = CompactLayout.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(CompactLayout, "__init__", counting)
    layer = make_layer()
    assert built == [ClusterLayout]  # no plain CompactLayout built, then replaced
    assert isinstance(layer.layout, ClusterLayout) and layer._receive_port.layout is layer.layout
