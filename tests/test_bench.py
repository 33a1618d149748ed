"""The benchmark in its --quick mode: it runs, reports every figure beside the
raw limit, and cleans up. The figures themselves are not asserted: this
machine is shared and noisy."""

import json
import os

import pytest

from asgi_redis import __version__
from asgi_redis.tools.bench import _second_database
from asgi_redis.tools.embedded import binary_identity

from .helpers import assert_one_line_error, run_cli
from .servers import redis_server_binary

EXPECTED_ROWS = [
    "send", "send + receive pair", "blocking receive p50", "blocking receive p99",
    "send_group 10 members", "send_group 100 members",
    "encrypted send", "encrypted send + receive pair",
    "2 shards: send", "2 shards: send + receive pair",
    "2 shards: blocking receive p50", "2 shards: blocking receive p99",
    "compact: send", "compact: send vs the layer's connection path", "compact: send + receive pair",
    "compact: blocking receive p50", "compact: blocking receive p99",
    "compact: send_group 10 members", "compact: send_group 100 members",
    "send_group 100 members of 1 process", "send_group 100 members of 4 processes",
    "compact: send_group 100 members of 1 process", "compact: send_group 100 members of 4 processes",
    "Redis time per delivered message (send + receive)", "Redis script time per delivered message (EVALSHA rows)",
    "Redis CPU per delivered message (INFO cpu)",
    *(f"{layout} layout: refused send, capacity {capacity:,}"
      for layout in ("classic", "compact") for capacity in (100, 500, 2000)),
]


def test_quick_bench_against_a_given_redis_reports_every_figure(redis_server):
    client = redis_server.client()
    try:
        before = client.dbsize()
        result = run_cli("--quick", "--json", "--url", redis_server.url, module="asgi_redis.bench")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert client.dbsize() == before  # its own keys, all removed
    finally:
        client.close()
    assert "2 shards: databases 0 and 1" in report["title"]
    assert [row["name"] for row in report["rows"]] == EXPECTED_ROWS
    for row in report["rows"]:
        assert row["ours"] > 0 and row["raw"] > 0 and row["ratio"] > 0, row
        assert row["raw_label"]


def test_quick_bench_table_with_embedded_servers():
    result = run_cli("bench", "--quick", "--members", "10,1000")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    product, version = binary_identity(redis_server_binary())
    assert out.splitlines()[0].startswith(f"asgi_redis {__version__} on embedded {product} {version} ")
    assert "speed vs raw" in out and "EVALSHA of 'return 1'" in out and "RPUSH + LPOP" in out
    assert "target: send >= 0.8x a raw EVALSHA round trip" in out


def test_quick_metrics_cost_compares_the_layer_with_itself(redis_server):
    client = redis_server.client()
    try:
        before = client.dbsize()
        result = run_cli("--quick", "--json", "--metrics-cost", "--url", redis_server.url, module="asgi_redis.bench")
        assert result.returncode == 0, result.stderr
        assert client.dbsize() == before
    finally:
        client.close()
    rows = json.loads(result.stdout)["rows"]
    assert [row["name"] for row in rows] == [
        "send, metrics on", "send + receive pair, metrics on", "send_group 100 members, metrics on",
    ]
    assert all(row["raw_label"] == "the same layer, metrics off" and row["ratio"] > 0 for row in rows)


def test_plot(tmp_path, redis_server):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    result = run_cli("bench", "--quick", "--url", redis_server.url, "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_members_is_a_usage_error():
    assert_one_line_error(run_cli("bench", "--members", "ten"), 2, "'ten'")


@pytest.mark.parametrize("host, second", [
    ("redis://localhost:6379", "redis://localhost:6379/1"),
    ("redis://:secret@localhost:6379/3", "redis://:secret@localhost:6379/4"),
    (("localhost", 6380), "redis://localhost:6380/1"),
    ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock?db=1"),
])
def test_second_database_for_the_two_shard_variant(host, second):
    assert _second_database(host) == second


@pytest.mark.skipif(not os.environ.get("ASGI_REDIS_CHANNELS_REDIS_PYTHON"),
                    reason="set ASGI_REDIS_CHANNELS_REDIS_PYTHON to an interpreter with channels_redis 4")
def test_quick_bench_beside_channels_redis(redis_server):
    python = os.environ["ASGI_REDIS_CHANNELS_REDIS_PYTHON"]
    result = run_cli("--quick", "--json", "--url", redis_server.url, "--members", "10",
                     "--channels-redis", python, module="asgi_redis.bench")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}
    for processes in ("1 process", "4 processes"):
        row = rows[f"compact: send_group 100 members of {processes} vs channels_redis"]
        assert row["ours"] > 0 and row["raw"] > 0
