"""The command line against a Redis Cluster: --url of one node (cluster mode detected)
or a settings module whose BACKEND is RedisClusterChannelLayer; run as a subprocess."""

from __future__ import annotations

import json
import textwrap

import pytest
import redis

from asgi_redis import RedisClusterChannelLayer
from asgi_redis.cluster import key_slot

from .helpers import run_cli

PREFIX = "clitest:"


@pytest.fixture
def cluster(redis_cluster):
    return redis_cluster


@pytest.fixture
def layer(cluster):
    built = RedisClusterChannelLayer(hosts=[cluster.url], prefix=PREFIX, group_expiry=60)
    built.flush()
    yield built
    built.flush()
    built.close()


def test_stats_inspect_and_flush_from_one_node_url(cluster, layer):
    names = [f"cli{n}" for n in range(12)]
    for name in names:
        layer.send(name, {})
    layer.send("cli!x", {})
    layer.group_add("cli.group", "cli!x")
    url = cluster.nodes[2].url  # any one node
    stats = run_cli("stats", "--json", "--url", url, "--prefix", PREFIX)
    assert stats.returncode == 0, stats.stderr
    snapshot = json.loads(stats.stdout)
    assert snapshot["global"]["messages_count"] == 13
    assert len(snapshot["shards"]) == 3 and all("Cluster node" in shard for shard in snapshot["shards"])
    assert sorted(snapshot["channels"]) == sorted(names + ["cli!"])

    inspect = run_cli("inspect", "--json", "--url", url, "--prefix", PREFIX)
    assert inspect.returncode == 0, inspect.stderr
    shards = json.loads(inspect.stdout)["shards"]
    assert sum(len(shard["channels"]) for shard in shards) == 13
    assert [group["name"] for shard in shards for group in shard["groups"]] == ["cli.group"]
    assert sum(1 for shard in shards if shard["channels"]) == 3  # every master holds some

    flush = run_cli("flush", "--yes", "--url", url, "--prefix", PREFIX)
    assert flush.returncode == 0, flush.stderr
    assert "total: removed" in flush.stdout
    assert layer.global_statistics()["messages_count"] == 0
    assert layer.receive(names + ["cli!"]) == (None, None)


def test_inspect_lists_a_channel_in_two_buckets_of_one_master_once(cluster, layer):
    """After a resharding a master may hold a normal channel's queue in two buckets:
    inspect lists the channel once there, pending summed, the oldest age kept."""
    name = "twobuckets"
    for number in range(3):
        layer.send(name, {"n": number})
    queue = layer.layout.queue_key(name)
    home = layer.router.owner(key_slot(queue))
    other_tag = next(tag for tag in layer.layout.bucket_tags
                     if layer.router.owner(key_slot(tag)) == home and layer.layout.queue_key(name, tag) != queue)
    with redis.Redis(*home) as client:  # the same entries in a second bucket's queue, as a resharding leaves them
        client.restore(layer.layout.queue_key(name, other_tag), 0, client.dump(queue))
    inspect = run_cli("inspect", "--json", "--url", cluster.url, "--prefix", PREFIX)
    assert inspect.returncode == 0, inspect.stderr
    listed = [(shard["shard"], channel) for shard in json.loads(inspect.stdout)["shards"]
              for channel in shard["channels"] if channel["name"] == name]
    assert len(listed) == 1, listed
    shard, channel = listed[0]
    assert f":{home[1]}" in shard and channel["pending"] == 6
    assert channel["oldest_age"] is not None and channel["oldest_age"] >= 0


def test_settings_module_with_the_cluster_backend(cluster, layer, tmp_path):
    (tmp_path / "clustersettings.py").write_text(textwrap.dedent(f"""
        CHANNEL_LAYERS = {{
            "default": {{
                "BACKEND": "asgi_redis.RedisClusterChannelLayer",
                "CONFIG": {{"hosts": [("127.0.0.1", {cluster.nodes[1].port})], "prefix": "{PREFIX}"}},
            }},
        }}
    """))
    layer.send("settings.channel", {})
    result = run_cli("stats", "--json", "--settings", "clustersettings", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    channels = json.loads(result.stdout)["channels"]
    assert list(channels) == ["settings.channel"]  # (messages_max_age depends on the machine's pace)
    assert (channels["settings.channel"]["messages_count"], channels["settings.channel"]["messages_pending"]) == (1, 1)


def test_classic_layout_on_a_cluster_is_a_one_line_usage_error(cluster):
    result = run_cli("stats", "--url", cluster.url, "--layout", "classic")
    assert result.returncode == 2
    assert "must be 'compact' on a cluster" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_demo_and_bench_against_the_cluster(cluster):
    demo = run_cli("demo", "--url", cluster.url, "--duration", "0.5", "--workers", "1", "--members", "3",
                   "--broadcasts", "2")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "2 broadcasts x 3 members: 6/6 delivered" in demo.stdout
    bench = run_cli("bench", "--quick", "--url", cluster.url, timeout=300)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "cluster: send" in bench.stdout and "target: cluster send" in bench.stdout
    for node in cluster.masters():
        with node.client() as client:
            assert client.keys("asgi-bench*") == [] and client.keys("{*}asgi-bench-raw*") == []
