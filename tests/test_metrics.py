"""In-process instruments (asgi_redis.metrics) against real servers: what the
layer counts in a prometheus_client registry, and that off means untouched."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asgi_redis import RedisChannelLayer, RedisClusterChannelLayer
from asgi_redis.errors import LayerConnectionError
from asgi_redis.local import RedisLocalChannelLayer

from .helpers import built_layers
from .servers import free_port

PREFIX = "mettest:"
STATS_PREFIX = "mettest-meta:"
HOOKED = ("send", "receive", "send_group", "_send_to_members", "_decode", "_connection_error_hook")


@pytest.fixture
def registry():
    return CollectorRegistry()


def any_layer(layer_class=RedisChannelLayer, **config):
    return layer_class(**config)


@pytest.fixture
def met_layer(redis_server):
    """``met_layer(layer_class=RedisChannelLayer, **config)`` under the test prefix."""
    yield from built_layers(any_layer, hosts=[redis_server.url], prefix=PREFIX, stats_prefix=STATS_PREFIX,
                            expiry=60)


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0


def test_off_by_default_leaves_the_layer_untouched(met_layer):
    layer = met_layer()
    assert layer.instruments is None
    assert not set(HOOKED) & set(vars(layer))  # the class's own methods, no wrapper
    assert type(layer).send is RedisChannelLayer.send
    layer.send("http.request", {"n": 1})
    assert layer.receive(["http.request"])[1] == {"n": 1}


def test_send_receive_and_refusals_are_counted(met_layer, registry):
    layer = met_layer(metrics=registry, channel_capacity={"small": 1})
    assert set(HOOKED) <= set(vars(layer))
    for number in range(3):
        layer.send("http.request", {"n": number})
    layer.send("small", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("small", {})
    for _ in range(3):
        assert layer.receive(["http.request"])[0] == "http.request"
    assert layer.receive(["http.request"]) == (None, None)
    assert layer.receive(["small"], block=True)[0] == "small"

    assert sample(registry, "asgi_redis_sent_messages_total") == 4
    assert sample(registry, "asgi_redis_refused_messages_total") == 1
    assert sample(registry, "asgi_redis_received_messages_total") == 4
    assert sample(registry, "asgi_redis_undecodable_messages_total") == 0
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="send") == 5
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="receive") == 4
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="receive_block") == 1
    assert 0 < sample(registry, "asgi_redis_operation_seconds_sum", operation="send") < 60
    # the histogram's buckets are cumulative and end with every observation
    assert sample(registry, "asgi_redis_operation_seconds_bucket", operation="send", le="+Inf") == 5


def test_send_group_counts_members_reached_and_skipped(met_layer, registry):
    layer = met_layer(metrics=registry, channel_capacity={"daphne.response.full!": 1})
    for name in ("daphne.response.a!1", "daphne.response.a!2", "daphne.response.b!1", "daphne.response.full!1"):
        layer.group_add("room", name)
    layer.send("daphne.response.full!0", {})  # fills that process channel
    layer.send_group("room", {"text": "hi"})
    assert sample(registry, "asgi_redis_sent_messages_total") == 1 + 3
    assert sample(registry, "asgi_redis_refused_messages_total") == 1
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="send_group") == 1


def test_undecodable_messages_are_counted(met_layer, registry):
    sender = met_layer(symmetric_encryption_keys=["one key"])
    receiver = met_layer(symmetric_encryption_keys=["another key"], metrics=registry)
    sender.send("http.request", {"n": 1})
    assert receiver.receive(["http.request"]) == (None, None)
    assert sample(registry, "asgi_redis_undecodable_messages_total") == 1
    assert sample(registry, "asgi_redis_received_messages_total") == 0


def test_async_receive_is_counted(met_layer, registry):
    layer = met_layer(metrics=registry)
    layer.send("http.request", {"n": 1})
    channel, _ = asyncio.run(asyncio.wait_for(layer.receive_async(["http.request"]), 30))
    assert channel == "http.request"
    assert sample(registry, "asgi_redis_received_messages_total") == 1


def test_connection_errors_by_shard_and_operation(registry):
    layer = RedisChannelLayer(hosts=[f"redis://:secret@127.0.0.1:{free_port()}"], metrics=registry)
    try:
        with pytest.raises(LayerConnectionError):
            layer.send("reply?abc", {})
        with pytest.raises(LayerConnectionError):
            layer.group_add("room", "reply?abc")
    finally:
        layer.close()
    shard = layer.shards.describe(0)
    assert "secret" not in shard
    assert sample(registry, "asgi_redis_connection_errors_total", shard=shard, operation="send") == 1
    assert sample(registry, "asgi_redis_connection_errors_total", shard=shard, operation="group_add") == 1
    assert sample(registry, "asgi_redis_sent_messages_total") == 0
    text = generate_latest(registry).decode()
    assert "secret" not in text
    assert {family.name for family in text_string_to_metric_families(text)} >= {
        "asgi_redis_connection_errors", "asgi_redis_operation_seconds", "asgi_redis_sent_messages",
    }


def test_layers_share_one_registry(met_layer, registry):
    first, second = met_layer(metrics=registry), met_layer(metrics=registry)
    first.send("http.request", {})
    second.send("http.request", {})
    assert first.instruments is second.instruments
    assert sample(registry, "asgi_redis_sent_messages_total") == 2


def test_the_default_registry(met_layer):
    from prometheus_client import REGISTRY

    layer = met_layer(metrics=True)
    before = sample(REGISTRY, "asgi_redis_sent_messages_total")
    layer.send("http.request", {})
    assert sample(REGISTRY, "asgi_redis_sent_messages_total") == before + 1


def test_local_layer_counts_both_sides(met_layer, registry, redis_shards):
    layer = met_layer(layer_class=RedisLocalChannelLayer, hosts=[redis_shards[0].url],
                      local_hosts=[redis_shards[1].url], metrics=registry)
    layer.send("http.request", {})  # the machine-local Redis
    layer.send("reply?abc", {})  # the shared one
    assert layer.receive(["http.request", "reply?abc"])[0] is not None
    assert layer.receive(["http.request", "reply?abc"])[0] is not None
    assert sample(registry, "asgi_redis_sent_messages_total") == 2
    assert sample(registry, "asgi_redis_received_messages_total") == 2


@pytest.mark.parametrize("bad", ["yes", 1, object()])
def test_a_bad_setting_is_named(redis_server, bad):
    with pytest.raises(ValueError, match="metrics must be True, False or a prometheus_client CollectorRegistry"):
        RedisChannelLayer(hosts=[redis_server.url], metrics=bad)


def test_latency_lands_in_its_bucket(met_layer, registry):
    layer = met_layer(metrics=registry)
    layer.blpop_timeout = 1
    assert layer.receive(["nothing.here"], block=True) == (None, None)  # waits its full second
    bucket = "asgi_redis_operation_seconds_bucket"
    assert sample(registry, bucket, operation="receive_block", le="0.5") == 0
    assert sample(registry, bucket, operation="receive_block", le="+Inf") == 1
    assert sample(registry, "asgi_redis_operation_seconds_sum", operation="receive_block") >= 0.9
    assert sample(registry, bucket, operation="send", le="+Inf") == 0


def test_compact_layout_counts_every_member_delivered(met_layer, registry):
    layer = met_layer(layout="compact", metrics=registry)
    members = ["daphne.response.p!1", "daphne.response.p!2", "daphne.response.p!3"]
    for name in members:
        layer.group_add("room", name)
    layer.send_group("room", {"text": "hi"})  # one entry for the process, fanned out on receive
    got = sorted(layer.receive(["daphne.response.p!"])[0] for _ in members)
    assert got == members
    assert sample(registry, "asgi_redis_sent_messages_total") == 3
    assert sample(registry, "asgi_redis_received_messages_total") == 3



@pytest.fixture
def cluster_met_layer(redis_cluster):
    """``cluster_met_layer(**config)``: RedisClusterChannelLayer under the test prefix."""
    yield from built_layers(RedisClusterChannelLayer, hosts=[redis_cluster.url], prefix=PREFIX,
                            stats_prefix=STATS_PREFIX, expiry=60)


def test_cluster_layer_is_counted(cluster_met_layer, registry):
    layer = cluster_met_layer(metrics=registry, channel_capacity={"small": 1})
    assert layer.instruments is not None
    names = [f"work{n}" for n in range(6)]  # normal channels, on several masters' buckets
    assert len({layer.router.slot_map.owner(layer._route(name)[1]) for name in names}) > 1
    for name in names:
        layer.send(name, {})
    layer.send("small", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("small", {})
    for member in ("daphne.response.a!1", "daphne.response.b!1", "daphne.response.c!1"):
        layer.group_add("room", member)
    layer.send_group("room", {"text": "hi"})
    received = [layer.receive(names + ["small"])[0] for _ in range(len(names) + 1)]
    assert sorted(received) == sorted(names + ["small"])
    assert layer.receive(names + ["small"]) == (None, None)
    got = sorted(layer.receive([f"daphne.response.{p}!"], block=True)[0] for p in "abc")
    assert got == ["daphne.response.a!1", "daphne.response.b!1", "daphne.response.c!1"]

    assert sample(registry, "asgi_redis_sent_messages_total") == len(names) + 1 + 3
    assert sample(registry, "asgi_redis_refused_messages_total") == 1
    assert sample(registry, "asgi_redis_received_messages_total") == len(names) + 1 + 3
    assert sample(registry, "asgi_redis_undecodable_messages_total") == 0
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="send") == len(names) + 2
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="send_group") == 1
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="receive") == len(names) + 2
    assert sample(registry, "asgi_redis_operation_seconds_count", operation="receive_block") == 3
