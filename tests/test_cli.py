"""The operations command line, run as a user runs it: a subprocess against real Redis."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from asgi_redis import RedisChannelLayer
from asgi_redis.tools.embedded import binary_identity, free_port

from .helpers import ROOT, LayerBuilder, assert_one_line_error, cli_environment, run_cli
from .servers import redis_server_binary

PREFIX = "clitest:"
STATS_PREFIX = "clitest-meta:"
COMMANDS = ["demo", "stats", "inspect", "flush", "bench", "exporter"]


def location(*servers):
    args = []
    for server in servers:
        args += ["--url", server.url]
    return args + ["--prefix", PREFIX, "--stats-prefix", STATS_PREFIX]


@pytest.fixture
def cli_layer(redis_server):
    """``cli_layer(*servers)``: a layer on those servers (default the test server), flushed before and after."""
    builder = LayerBuilder(RedisChannelLayer, prefix=PREFIX, stats_prefix=STATS_PREFIX, group_expiry=60)
    yield lambda *servers: builder(hosts=[s.url for s in servers or [redis_server]])
    builder.close()


def fill(layer):
    for number in range(5):
        layer.send("http.request", {"n": number})
    layer.send("websocket.send!abc", {"text": "hi"})
    layer.send("reply?xyz", {"ok": True})
    for number in range(3):
        layer.group_add("chat", f"websocket.send!member{number}")


# -- usage and errors ---------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: asgi-redis")
    assert "--url" in result.stdout or command is None


def test_no_command_is_a_one_line_usage_error():
    assert_one_line_error(run_cli(), 2, "choose a command")


def test_bad_option_value_is_a_one_line_usage_error():
    assert_one_line_error(run_cli("inspect", "--limit", "none"), 2, "--limit", "'none'")
    assert_one_line_error(run_cli("stats", "--no-such-option"), 2, "--no-such-option")


def test_bad_url_is_a_usage_error():
    assert_one_line_error(run_cli("stats", "--url", "http://localhost:6379"), 2, "http://localhost:6379")


@pytest.mark.parametrize("command", ["stats", "inspect", "flush --yes"])
def test_unreachable_redis_is_a_one_line_runtime_error(command):
    port = free_port()
    result = run_cli(*command.split(), "--url", f"redis://127.0.0.1:{port}")
    assert_one_line_error(result, 1, "cannot reach Redis", str(port))


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("asgi_redis ")


# -- stats --------------------------------------------------------------------


def _at_most_seconds_since(started):
    """Whole seconds a message sent after ``started`` may be old by now (ages are whole seconds)."""
    return math.ceil(time.monotonic() - started)


def test_stats_table(redis_server, cli_layer):
    started = time.monotonic()
    fill(cli_layer())
    result = run_cli("stats", *location(redis_server))
    oldest_possible = _at_most_seconds_since(started)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "messages_count 7" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    for name, count in (("http.request", "5"), ("websocket.send!", "1"), ("reply?xyz", "1")):
        messages, pending, full, age = rows[name]
        assert [messages, pending, full] == [count, count, "0"]
        assert 0 <= int(age) <= oldest_possible, (name, age)


def test_stats_json_matches_the_layer(redis_shards, cli_layer):
    layer = cli_layer(*redis_shards)
    fill(layer)
    layer.receive(["http.request"])
    result = run_cli("stats", "--json", *location(*redis_shards))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["global"] == layer.global_statistics()
    assert report["shards"] == [server.url for server in redis_shards]
    for name in ("http.request", "websocket.send!", "reply?xyz"):
        expected, reported = layer.channel_statistics(name), dict(report["channels"][name])
        # read a moment apart, the whole-second age may have ticked once in between
        assert expected.pop("messages_max_age") - reported.pop("messages_max_age") in (0, 1), name
        assert reported == expected, name
    assert report["channels"]["http.request"]["messages_pending"] == 4


def test_stats_skips_foreign_keys_under_the_prefixes(redis_server, cli_layer):
    fill(cli_layer())
    client = redis_server.client()
    try:
        client.set(STATS_PREFIX + "not a channel:messages_count", 1)
        client.rpush(PREFIX + "some other list", "x")
        result = run_cli("stats", "--json", *location(redis_server))
    finally:
        client.delete(STATS_PREFIX + "not a channel:messages_count", PREFIX + "some other list")
        client.close()
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["channels"]) == ["http.request", "reply?xyz", "websocket.send!"]


def test_stats_watch_refreshes_with_a_rate(redis_server, cli_layer):
    fill(cli_layer())
    result = run_cli("stats", "--json", "--watch", "0.1", "--count", "3", *location(redis_server))
    assert result.returncode == 0, result.stderr
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(snapshots) == 3
    assert "messages_per_second" not in snapshots[0]
    assert snapshots[2]["messages_per_second"] == 0


def test_wrong_prefix_is_pointed_out(redis_server, cli_layer):
    fill(cli_layer())
    result = run_cli("inspect", "--url", redis_server.url, "--prefix", "nothing-here:")
    assert result.returncode == 0
    assert "wrong --prefix?" in result.stderr and repr(PREFIX) in result.stderr


# -- inspect ------------------------------------------------------------------


def test_inspect_table(redis_server, cli_layer):
    fill(cli_layer())
    result = run_cli("inspect", *location(redis_server))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"shard {redis_server.url}: 3 channels, 1 group, 7 message bodies" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:] if line.startswith("  ")}
    assert rows["http.request"][0] == "5" and rows["http.request"][2] == "s"
    assert rows["chat"] == ["3", "0"]


def test_inspect_json_per_shard(redis_shards, cli_layer):
    layer = cli_layer(*redis_shards)
    fill(layer)
    result = run_cli("inspect", "--json", *location(*redis_shards))
    assert result.returncode == 0, result.stderr
    shards = json.loads(result.stdout)["shards"]
    assert [shard["shard"] for shard in shards] == [server.url for server in redis_shards]
    pending = {}
    for shard in shards:
        for channel in shard["channels"]:
            pending[channel["name"]] = pending.get(channel["name"], 0) + channel["pending"]
            assert 0 <= channel["oldest_age"] <= 60
    assert pending == {"http.request": 5, "websocket.send!": 1, "reply?xyz": 1}
    # groups live on the shard of their name (the 1.4.3 hash ring)
    group_shard = shards[layer.shard_for("chat")]
    assert group_shard["groups"] == [{"name": "chat", "members": 3, "stored": 3}]
    assert sum(shard["bodies"] for shard in shards) == 7


def test_inspect_limit(redis_server, cli_layer):
    layer = cli_layer()
    for number in range(5):
        layer.send(f"many.channel{number}", {"n": number})
    result = run_cli("inspect", "--json", "--limit", "2", *location(redis_server))
    shard = json.loads(result.stdout)["shards"][0]
    assert len(shard["channels"]) == 2 and shard["complete"] is False


def test_inspect_scan_is_bounded_on_a_large_keyspace(redis_server):
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=PREFIX, stats_prefix=STATS_PREFIX,
                              capacity=5000)
    layer.flush()
    try:
        for number in range(2500):
            layer.send("busy", {"n": number})
        result = run_cli("inspect", "--json", "--limit", "1", *location(redis_server))
        shard = json.loads(result.stdout)["shards"][0]
        assert shard["complete"] is False
        assert 1000 <= shard["scanned"] < 2500
    finally:
        layer.flush()
        layer.close()


def test_inspect_stats_and_flush_never_use_keys(redis_server, cli_layer):
    fill(cli_layer())
    client = redis_server.client()
    try:
        client.config_resetstat()
        for command in (["stats"], ["inspect"], ["flush", "--yes"]):
            assert run_cli(*command, *location(redis_server)).returncode == 0
        used = client.info("commandstats")
    finally:
        client.close()
    assert "cmdstat_scan" in used
    assert "cmdstat_keys" not in used


# -- flush --------------------------------------------------------------------


def count_keys(server):
    client = server.client()
    try:
        return sum(1 for _ in client.scan_iter(match="clitest*"))
    finally:
        client.close()


def test_flush_asks_first(redis_server, cli_layer):
    fill(cli_layer())
    before = count_keys(redis_server)
    refused = run_cli("flush", *location(redis_server), stdin="n\n")
    assert refused.returncode == 1 and "cancelled" in refused.stderr
    no_answer = run_cli("flush", *location(redis_server), stdin="")
    assert_one_line_error(no_answer, 1, "--yes")
    assert count_keys(redis_server) == before > 0
    accepted = run_cli("flush", *location(redis_server), stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "[y/N]" in accepted.stderr
    assert accepted.stdout.strip() == f"{redis_server.url}: removed {before} keys"
    assert count_keys(redis_server) == 0


def test_flush_yes_counts_per_shard(redis_shards, cli_layer):
    fill(cli_layer(*redis_shards))
    expected = [count_keys(server) for server in redis_shards]
    result = run_cli("flush", "--yes", *location(*redis_shards))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{redis_shards[0].url}: removed {expected[0]} keys",
        f"{redis_shards[1].url}: removed {expected[1]} keys",
        f"total: removed {sum(expected)} keys",
    ]
    assert [count_keys(server) for server in redis_shards] == [0, 0]


# -- Django settings ------------------------------------------------------------


def write_settings(tmp_path, body):
    package = tmp_path / "mysite"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(textwrap.dedent(body))


def test_settings_module_is_read_like_channels_does(tmp_path, redis_server, cli_layer):
    fill(cli_layer())
    write_settings(tmp_path, f"""
        SECRET_KEY = "x"
        CHANNEL_LAYERS = {{
            "default": {{"BACKEND": "asgiref.inmemory.ChannelLayer", "ROUTING": "mysite.routing.routes"}},
            "redis": {{
                "BACKEND": "asgi_redis.RedisChannelLayer",
                "ROUTING": "mysite.routing.routes",
                "CONFIG": {{"hosts": [("127.0.0.1", {redis_server.port})], "prefix": {PREFIX!r},
                            "stats_prefix": {STATS_PREFIX!r}}},
            }},
        }}
    """)
    result = run_cli("stats", "--json", "--settings", "mysite.settings", "--alias", "redis", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["channels"]["http.request"]["messages_pending"] == 5

    wrong_backend = run_cli("stats", "--settings", "mysite.settings", cwd=tmp_path)
    assert_one_line_error(wrong_backend, 2, "asgiref.inmemory.ChannelLayer")
    unknown_alias = run_cli("stats", "--settings", "mysite.settings", "--alias", "nope", cwd=tmp_path)
    assert_one_line_error(unknown_alias, 2, "'nope'", "'redis'")
    missing = run_cli("stats", "--settings", "nosuchsite.settings", cwd=tmp_path)
    assert_one_line_error(missing, 2, "nosuchsite.settings")


def test_settings_with_bad_config_is_a_usage_error(tmp_path):
    write_settings(tmp_path, """
        CHANNEL_LAYERS = {"default": {"BACKEND": "asgi_redis.RedisChannelLayer",
                                      "CONFIG": {"hosts": "redis://localhost:6379"}}}
    """)
    result = run_cli("inspect", "--settings", "mysite.settings", cwd=tmp_path)
    assert_one_line_error(result, 2, "single string")


# -- the console script and the demo ----------------------------------------------


def test_console_script_when_installed():
    script = os.path.join(os.path.dirname(sys.executable), "asgi-redis")
    if not os.path.exists(script):
        script = shutil.which("asgi-redis")
    if not script:
        pytest.skip("the package is not installed with its console script here")
    result = subprocess.run([script, "flush", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--yes" in result.stdout


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by anyone) counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_demo_end_to_end_with_embedded_redis():
    result = run_cli("demo", "--duration", "1.5", "--workers", "2", "--members", "10", "--broadcasts", "3",
                     timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # the first line names the server it started and its version: the binary the tests use
    product, version = binary_identity(redis_server_binary())
    assert out.splitlines()[0].startswith(f"asgi_redis demo on embedded {product} {version} at redis://127.0.0.1:")
    assert "started 2 worker processes" in out
    assert "messages/s" in out and "p99" in out
    assert "3 broadcasts x 10 members: 30/30 delivered" in out
    assert "summary" in out and out.strip().endswith("removed the demo's keys")
    # everything it started is gone: the embedded server and the workers
    embedded_pid = int(out.split("(pid ", 1)[1].split(",", 1)[0])
    worker_pids = [int(pid) for pid in out.split("(pids ", 1)[1].split(")", 1)[0].split(", ")]
    for pid in [embedded_pid, *worker_pids]:
        assert not pid_alive(pid), pid


def test_demo_against_a_given_redis_leaves_nothing_behind(redis_server):
    client = redis_server.client()
    try:
        before = client.dbsize()
        result = run_cli("demo", "--url", redis_server.url, "--duration", "0.5", "--workers", "1",
                         "--members", "3", "--broadcasts", "2", timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 broadcasts x 3 members: 6/6 delivered" in result.stdout
        assert client.dbsize() == before
    finally:
        client.close()


def test_demo_stopped_with_sigterm_stops_everything_it_started():
    demo = subprocess.Popen([sys.executable, "-m", "asgi_redis", "demo", "--duration", "60", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=cli_environment())
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("started 2 worker processes"):
                break
        out = "".join(lines)
        embedded_pid = int(out.split("(pid ", 1)[1].split(",", 1)[0])
        worker_pids = [int(pid) for pid in out.split("(pids ", 1)[1].split(")", 1)[0].split(", ")]
        demo.terminate()  # SIGTERM to the demo alone, as a supervisor would send
        demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert demo.returncode == 143
    for pid in [embedded_pid, *worker_pids]:
        assert not pid_alive(pid), pid


def test_stats_inspect_and_flush_on_the_compact_layout(redis_server):
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=PREFIX, stats_prefix=STATS_PREFIX,
                              group_expiry=60, layout="compact")
    try:
        layer.flush()
        fill(layer)
        where = [*location(redis_server), "--layout", "compact"]
        stats = run_cli("stats", *where)
        assert stats.returncode == 0, stats.stderr
        lines = stats.stdout.splitlines()
        assert "messages_count 7" in lines[1]
        rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
        # count, pending, (oldest age: seconds, depends on the machine's pace), full
        assert [rows["http.request"][i] for i in (0, 1, 3)] == ["5", "5", "0"]
        assert [rows["websocket.send!"][i] for i in (0, 1, 3)] == ["1", "1", "0"]
        inspected = run_cli("inspect", *where)
        assert inspected.returncode == 0, inspected.stderr
        assert f"shard {redis_server.url}: 3 channels, 1 group, 0 message bodies" in inspected.stdout
        rows = {line.split()[0]: line.split()[1:] for line in inspected.stdout.splitlines()[3:]
                if line.startswith("  ")}
        assert rows["http.request"][0] == "5" and rows["chat"] == ["3", "0"]
        flushed = run_cli("flush", "--yes", *where)
        assert flushed.returncode == 0, flushed.stderr
        assert count_keys(redis_server) == 0
        bad = run_cli("stats", *location(redis_server), "--layout", "tiny")
        assert_one_line_error(bad, 2, "'tiny'")
    finally:
        layer.flush()
        layer.close()
