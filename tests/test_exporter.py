"""asgi-redis exporter: scraped over real HTTP, against real servers, parsed with
prometheus_client's own parser; the figures must match a state set up here."""

import argparse
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asgi_redis import RedisChannelLayer, RedisClusterChannelLayer, RedisSentinelChannelLayer
from asgi_redis.cluster.keyslot import key_slot
from asgi_redis.tools.exporter import ChannelFolding, LayerCollector, MetricsServer, parse_listen

from .cluster import RedisCluster
from .helpers import ROOT, LayerBuilder, cli_environment
from .servers import RedisProcess
from .topology import SentinelTopology

PREFIX = "exptest:"
STATS_PREFIX = "exptest-meta:"


@pytest.fixture
def exp_layer(redis_server):
    """Layers under the test prefix (on the given servers, else the test server),
    flushed before and after (LayerBuilder tolerates a server a test stopped)."""
    builder = LayerBuilder(RedisChannelLayer, hosts=[redis_server.url], prefix=PREFIX,
                           stats_prefix=STATS_PREFIX, expiry=60, group_expiry=60)

    def build(*servers, **config):
        if servers:
            config["hosts"] = [server.url for server in servers]
        return builder(**config)

    try:
        yield build
    finally:
        builder.close()


@pytest.fixture
def serve():
    """Start an exporter on a free port in this process; yields a function returning its URL."""
    servers = []

    def start(layer, **options):
        options.setdefault("min_interval", 0)
        folding = options.pop("folding", None)
        server = MetricsServer(LayerCollector(layer, folding=folding, **options), "127.0.0.1", 0).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.close()


def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return response.read().decode("utf8")


def scrape(url):
    """``{(name, ((label, value), ...)): value}`` of one scrape."""
    samples = {}
    for family in text_string_to_metric_families(fetch(url)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples, name, label):
    """``{label value: sample value}`` of one metric."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def age_oldest(raw, queue_key, seconds, expiry=60):
    """Make the oldest message of a queue look ``seconds`` old (its body's TTL counts down from expiry)."""
    body_key = raw.lindex(queue_key, 0)
    assert raw.pexpire(body_key, int((expiry - seconds) * 1000))


def command_names(round_trips):
    """Command names sent to Redis, from the packed commands the round_trips fixture saw."""
    names = []
    for packed in round_trips.commands:
        data = b"".join(packed) if isinstance(packed, (list, tuple)) else bytes(packed)
        for part in data.split(b"*")[1:]:
            lines = part.split(b"\r\n")
            if len(lines) > 2:
                names.append(lines[2].upper())
    return names


# -- one Redis ----------------------------------------------------------------


def test_figures_match_the_state_on_one_redis(exp_layer, serve, raw):
    layer = exp_layer(channel_capacity={"small": 2})
    for number in range(3):
        layer.send("http.request", {"n": number})
    layer.send("daphne.response.abc!one", {"n": 1})
    layer.send("daphne.response.abc!two", {"n": 2})
    layer.send("reply?xyz", {"ok": True})
    layer.send("small", {"n": 1})
    layer.send("small", {"n": 2})
    with pytest.raises(layer.ChannelFull):
        layer.send("small", {"n": 3})
    for number in range(3):
        layer.group_add("chat", f"daphne.response.abc!m{number}")
    layer.group_add("lobby", "daphne.response.abc!m0")
    age_oldest(raw, PREFIX + "http.request", 30)
    samples = scrape(serve(layer))

    assert labelled(samples, "asgi_redis_channel_pending_messages", "channel") == {
        "http.request": 3, "daphne.response.abc!": 2, "reply?xyz": 1, "small": 2,
    }
    ages = labelled(samples, "asgi_redis_channel_oldest_message_age_seconds", "channel")
    assert 29 <= ages["http.request"] <= 40, ages
    assert 0 <= ages["small"] < 20, ages
    assert labelled(samples, "asgi_redis_group_members", "group") == {"chat": 3, "lobby": 1}
    assert value(samples, "asgi_redis_messages_count") == 8
    assert value(samples, "asgi_redis_channel_full_count") == 1
    assert value(samples, "asgi_redis_channel_messages_count", channel="http.request") == 3
    assert value(samples, "asgi_redis_channel_channel_full_count", channel="small") == 1
    assert value(samples, "asgi_redis_channel_channel_full_count", channel="http.request") == 0
    assert value(samples, "asgi_redis_expiry_seconds") == 60
    shard = layer.shards.describe(0)
    assert value(samples, "asgi_redis_shard_up", shard=shard) == 1
    assert 0 < value(samples, "asgi_redis_shard_round_trip_seconds", shard=shard) < 30
    assert value(samples, "asgi_redis_shard_used_memory_bytes", shard=shard) > 100_000
    assert value(samples, "asgi_redis_shard_connected_clients", shard=shard) >= 1
    assert value(samples, "asgi_redis_scrape_truncated", shard=shard) == 0
    assert value(samples, "asgi_redis_scrape_keys_scanned", shard=shard) >= 13  # 8 queued + lists + groups
    assert value(samples, "asgi_redis_scrape_duration_seconds") > 0

    # messages taken off a queue leave it: the next scrape follows
    layer.receive(["http.request"])
    after = scrape(serve(layer))
    assert value(after, "asgi_redis_channel_pending_messages", channel="http.request") == 2


def test_the_compact_layout(exp_layer, serve):
    layer = exp_layer(layout="compact", channel_capacity={"small": 1})
    for number in range(3):
        layer.send("http.request", {"n": number})
    layer.send("daphne.response.abc!one", {})
    layer.send("small", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("small", {})
    layer.group_add("chat", "daphne.response.abc!one")
    layer.group_add("chat", "daphne.response.abc!two")
    samples = scrape(serve(layer))
    assert labelled(samples, "asgi_redis_channel_pending_messages", "channel") == {
        "http.request": 3, "daphne.response.abc!": 1, "small": 1,
    }
    assert 0 <= value(samples, "asgi_redis_channel_oldest_message_age_seconds", channel="http.request") < 30
    assert labelled(samples, "asgi_redis_group_members", "group") == {"chat": 2}
    assert value(samples, "asgi_redis_messages_count") == 5
    assert value(samples, "asgi_redis_channel_full_count") == 1
    assert value(samples, "asgi_redis_channel_messages_count", channel="http.request") == 3
    assert value(samples, "asgi_redis_channel_channel_full_count", channel="small") == 1


def test_a_channel_known_only_by_its_counters_shows_nothing_pending(exp_layer, serve):
    layer = exp_layer()
    layer.send("http.disconnect", {})
    assert layer.receive(["http.disconnect"])[0] == "http.disconnect"
    samples = scrape(serve(layer))
    assert value(samples, "asgi_redis_channel_pending_messages", channel="http.disconnect") == 0
    assert ("asgi_redis_channel_oldest_message_age_seconds", (("channel", "http.disconnect"),)) not in samples
    assert value(samples, "asgi_redis_channel_messages_count", channel="http.disconnect") == 1


def test_key_budget_cuts_the_scan_short_and_says_so(exp_layer, serve):
    layer = exp_layer()
    for number in range(40):
        layer.send(f"work{number}", {"n": number})
    shard = layer.shards.describe(0)
    full = scrape(serve(layer))
    assert value(full, "asgi_redis_scrape_truncated", shard=shard) == 0
    assert len(labelled(full, "asgi_redis_channel_pending_messages", "channel")) == 40

    cut = scrape(serve(layer, key_budget=20))
    assert value(cut, "asgi_redis_scrape_truncated", shard=shard) == 1
    # 121 keys: 40 queues, 40 bodies, 40 channel counters and the global messages_count;
    # the budget stopped the walk before the counters
    assert value(full, "asgi_redis_scrape_keys_scanned", shard=shard) == 121
    assert value(cut, "asgi_redis_scrape_keys_scanned", shard=shard) <= 80


def test_series_limit_keeps_the_busiest(exp_layer, serve):
    layer = exp_layer()
    for number in range(6):
        for _ in range(number + 1):
            layer.send(f"busy{number}", {})
    samples = scrape(serve(layer, max_channels=3))
    assert labelled(samples, "asgi_redis_channel_pending_messages", "channel") == {
        "busy5": 6, "busy4": 5, "busy3": 4,
    }
    assert value(samples, "asgi_redis_scrape_dropped_series") == 3


def test_folding_process_and_reply_channels(exp_layer, serve):
    layer = exp_layer()
    layer.send("daphne.response.aaa!x", {})
    layer.send("daphne.response.bbb!y", {})
    layer.send("daphne.response.bbb!z", {})
    layer.send("http.response?one", {})
    layer.send("http.response?two", {})
    layer.send("worker.a", {})
    layer.send("worker.b", {})
    layer.send("plain", {})
    unfolded = scrape(serve(layer))
    assert labelled(unfolded, "asgi_redis_channel_pending_messages", "channel") == {
        "daphne.response.aaa!": 1, "daphne.response.bbb!": 2, "http.response?one": 1,
        "http.response?two": 1, "worker.a": 1, "worker.b": 1, "plain": 1,
    }
    folded = scrape(serve(layer, folding=ChannelFolding(["worker.*"], process_channels=True)))
    assert labelled(folded, "asgi_redis_channel_pending_messages", "channel") == {
        "daphne.response.*!": 3, "http.response?*": 2, "worker.*": 2, "plain": 1,
    }
    assert value(folded, "asgi_redis_channel_messages_count", channel="daphne.response.*!") == 3


def test_concurrent_scrapes_walk_redis_once(exp_layer, serve, round_trips):
    layer = exp_layer()
    layer.send("http.request", {})
    url = serve(layer, min_interval=3600)
    round_trips.commands.clear()
    results = []

    def one_scrape():
        results.append(scrape(url))

    threads = [threading.Thread(target=one_scrape) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 6
    assert all(value(r, "asgi_redis_channel_pending_messages", channel="http.request") == 1 for r in results)
    names = command_names(round_trips)
    assert names.count(b"PING") == 1, names  # one scrape's worth of work for six scrapers
    assert b"SCAN" in names and b"KEYS" not in names
    round_trips.commands.clear()
    scrape(url)
    assert command_names(round_trips) == []  # within min_interval: served from the last scrape


def test_registering_does_not_scrape(exp_layer, round_trips):
    collector = LayerCollector(exp_layer())
    round_trips.commands.clear()
    CollectorRegistry(auto_describe=True).register(collector)
    assert command_names(round_trips) == []


def test_passwords_never_shown(serve):
    with RedisProcess(extra_config=["requirepass s3cretpw"]) as server:
        layer = RedisChannelLayer(hosts=[f"redis://:s3cretpw@127.0.0.1:{server.port}"], prefix=PREFIX,
                                  stats_prefix=STATS_PREFIX)
        try:
            layer.send("http.request", {})
            url = serve(layer)
            text = fetch(url)
            samples = scrape(url)
        finally:
            layer.close()
    assert "s3cretpw" not in text
    assert value(samples, "asgi_redis_shard_up", shard=f"redis://127.0.0.1:{server.port}") == 1


def test_a_user_refused_info_still_gets_the_queues(serve):
    acl = ["user default on nopass ~* &* +@all", "user limited on >pw ~* &* +@all -info"]
    with RedisProcess(extra_config=acl) as server:
        layer = RedisChannelLayer(hosts=[f"redis://limited:pw@127.0.0.1:{server.port}"], prefix=PREFIX,
                                  stats_prefix=STATS_PREFIX)
        try:
            layer.send("http.request", {})
            samples = scrape(serve(layer))
        finally:
            layer.close()
    shard = f"redis://127.0.0.1:{server.port}"
    assert value(samples, "asgi_redis_shard_up", shard=shard) == 1
    assert value(samples, "asgi_redis_channel_pending_messages", channel="http.request") == 1
    assert not labelled(samples, "asgi_redis_shard_used_memory_bytes", "shard")
    assert not labelled(samples, "asgi_redis_shard_connected_clients", "shard")


def test_http_paths(exp_layer, serve):
    url = serve(exp_layer())
    root = url[: -len("/metrics")]
    assert "/metrics" in fetch(root + "/")
    with pytest.raises(urllib.error.HTTPError) as caught:
        fetch(root + "/elsewhere")
    assert caught.value.code == 404


def test_listen_parsing():
    assert parse_listen("127.0.0.1:9808") == ("127.0.0.1", 9808)
    assert parse_listen("[::1]:9808") == ("::1", 9808)
    assert parse_listen(":9808") == ("0.0.0.0", 9808)
    for bad in ("9808", "host:", "host:http", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
            parse_listen(bad)


# -- two shards ---------------------------------------------------------------


@pytest.fixture
def own_shards():
    """Two servers of this test's own, as one of them gets stopped."""
    servers = [RedisProcess(), RedisProcess()]
    yield servers
    for server in servers:
        server.close()


def test_two_shards_summed_then_one_stopped(exp_layer, serve, own_shards):
    layer = exp_layer(*own_shards)
    for number in range(4):  # a normal channel: spread over both shards in turn
        layer.send("http.request", {"n": number})
    clients = [server.client() for server in own_shards]
    try:
        assert [client.llen(PREFIX + "http.request") for client in clients] == [2, 2]
        age_oldest(clients[1], PREFIX + "http.request", 25)
    finally:
        for client in clients:
            client.close()
    # a group and a process channel on each shard, wherever their names hash
    groups = {layer.shard_for(f"room{n}"): f"room{n}" for n in range(40)}
    processes = {layer.shard_for(f"daphne.response.p{n}!"): f"daphne.response.p{n}!" for n in range(40)}
    assert sorted(groups) == sorted(processes) == [0, 1]
    for index in (0, 1):
        layer.group_add(groups[index], "daphne.response.p0!a")
        layer.group_add(groups[index], "daphne.response.p0!b")
        layer.send(processes[index] + "c", {})
    shard0, shard1 = layer.shards.describe(0), layer.shards.describe(1)
    url = serve(layer)
    both = scrape(url)
    assert value(both, "asgi_redis_channel_pending_messages", channel="http.request") == 4
    assert 24 <= value(both, "asgi_redis_channel_oldest_message_age_seconds", channel="http.request") <= 35
    assert labelled(both, "asgi_redis_group_members", "group") == {groups[0]: 2, groups[1]: 2}
    assert value(both, "asgi_redis_messages_count") == 6
    assert labelled(both, "asgi_redis_shard_up", "shard") == {shard0: 1, shard1: 1}

    own_shards[1].stop()
    one = scrape(url)  # still a scrape, with what the live shard holds
    assert labelled(one, "asgi_redis_shard_up", "shard") == {shard0: 1, shard1: 0}
    assert value(one, "asgi_redis_channel_pending_messages", channel="http.request") == 2
    assert value(one, "asgi_redis_channel_pending_messages", channel=processes[0]) == 1
    assert (("asgi_redis_channel_pending_messages", (("channel", processes[1]),))) not in one
    assert labelled(one, "asgi_redis_group_members", "group") == {groups[0]: 2}
    assert value(one, "asgi_redis_messages_count") == 3
    assert labelled(one, "asgi_redis_shard_round_trip_seconds", "shard").keys() == {shard0}


def test_sentinel_layer(serve):
    topology = SentinelTopology(["svc-x"], sentinel_count=1)
    try:
        layer = RedisSentinelChannelLayer(hosts=topology.sentinel_addresses, services=["svc-x"],
                                          prefix=PREFIX, stats_prefix=STATS_PREFIX)
        try:
            layer.flush()
            layer.send("http.request", {})
            layer.send("http.request", {})
            layer.group_add("room", "daphne.response.x!1")
            samples = scrape(serve(layer))
        finally:
            layer.close()
    finally:
        topology.close()
    assert value(samples, "asgi_redis_channel_pending_messages", channel="http.request") == 2
    assert value(samples, "asgi_redis_group_members", group="room") == 1
    (shard, up), = labelled(samples, "asgi_redis_shard_up", "shard").items()
    assert up == 1 and shard.startswith("service 'svc-x'"), shard


# -- a Redis Cluster ---------------------------------------------------------------


@pytest.fixture
def cluster_layers(redis_cluster):
    """``build(**config)``: cluster layers under the test prefix, flushed before and after."""
    built = []

    def build(**config):
        layer = RedisClusterChannelLayer(hosts=[redis_cluster.url], prefix=PREFIX, stats_prefix=STATS_PREFIX,
                                         group_expiry=60, **config)
        if not built:
            layer.flush()
        built.append(layer)
        return layer

    yield build
    if built:
        built[0].flush()
    for layer in built:
        layer.close()


def test_cluster_layer_summed_over_masters(cluster_layers, redis_cluster, serve):
    layer = cluster_layers(expiry=60)
    slot_map = layer.router.slot_map
    owner = {tag: slot_map.owner(key_slot(tag)) for tag in layer.layout.bucket_tags}
    primary = layer.layout.bucket_of("http.request")
    same_master = next(t for t in layer.layout.bucket_tags if t != primary and owner[t] == owner[primary])
    other_master = next(t for t in layer.layout.bucket_tags if owner[t] != owner[primary])
    # messages of one channel in three buckets, two on one master and one on another: where
    # processes that read an older slot map sent them (a resharding moved the primary buckets).
    # The first one's expiry is shorter: to this layer (expiry 60) its message looks 25 s old.
    older_map = cluster_layers(expiry=35)
    older_map.layout.primary_tags = lambda: [same_master]
    older_map.send("http.request", {"n": 0})
    other_map = cluster_layers(expiry=60)
    other_map.layout.primary_tags = lambda: [other_master]
    for number in range(3):
        other_map.send("http.request", {"n": number})
    for number in range(2):
        layer.send("http.request", {"n": number})
    for tag, pending in ((primary, 2), (same_master, 1), (other_master, 3)):
        assert layer.router.client(owner[tag]).llen(layer.layout.queue_key("http.request", tag)) == pending
    names = [f"work{n}" for n in range(12)]
    for name in names:
        layer.send(name, {})
    assert len({owner[layer.layout.bucket_of(name)] for name in names}) == 3  # on every master
    layer.send("daphne.response.abc!one", {})
    layer.send("daphne.response.abc!two", {})
    for number in range(3):
        layer.group_add("chat", f"daphne.response.abc!m{number}")
    layer.group_add("lobby", "daphne.response.abc!m0")
    masters = {layer.slots.describe(slot) for slot in layer.slots.master_slots()}
    assert len(masters) == 3

    def check(samples):
        assert labelled(samples, "asgi_redis_channel_pending_messages", "channel") == {
            "http.request": 6, "daphne.response.abc!": 2, **{name: 1 for name in names},
        }
        assert 24 <= value(samples, "asgi_redis_channel_oldest_message_age_seconds", channel="http.request") <= 40
        assert 0 <= value(samples, "asgi_redis_channel_oldest_message_age_seconds", channel="work0") < 20
        assert labelled(samples, "asgi_redis_group_members", "group") == {"chat": 3, "lobby": 1}
        assert value(samples, "asgi_redis_messages_count") == 6 + 12 + 2
        assert value(samples, "asgi_redis_channel_messages_count", channel="http.request") == 6
        assert labelled(samples, "asgi_redis_shard_up", "shard") == {shard: 1 for shard in masters}
        assert labelled(samples, "asgi_redis_scrape_truncated", "shard") == {shard: 0 for shard in masters}
        assert labelled(samples, "asgi_redis_shard_round_trip_seconds", "shard").keys() == masters
        assert all(v > 0 for v in labelled(samples, "asgi_redis_scrape_keys_scanned", "shard").values())

    check(scrape(serve(layer)))
    # the command line finds the cluster from any one node's URL
    process = run_exporter("--url", redis_cluster.nodes[2].url, "--prefix", PREFIX, "--stats-prefix", STATS_PREFIX,
                           "--listen", "127.0.0.1:0", "--min-interval", "0")
    try:
        check(scrape(served_url(process)))
    finally:
        process.terminate()
        process.wait(30)


def test_cluster_master_stopped_is_shard_up_0_the_others_still_scraped(serve):
    """A cluster of its own (the shared one must keep its nodes): one master SIGKILLed by
    its pid, without a replica to take over; full coverage off, so the others serve on."""
    nodes = RedisCluster(masters=3, replicas=0, node_timeout_ms=1000,
                         extra_config=["cluster-require-full-coverage no"])
    layer = RedisClusterChannelLayer(hosts=[nodes.url], prefix=PREFIX, stats_prefix=STATS_PREFIX,
                                     connection_kwargs={"socket_timeout": 2.0, "socket_connect_timeout": 1.0})
    try:
        victim = nodes.masters()[1]
        on = {}  # a "!" channel on each master
        for number in range(200):
            name = f"daphne.response.n{number}!"
            on.setdefault(nodes.master_of_slot(key_slot(layer.layout.queue_key(name))).port, name)
        assert len(on) == 3
        for name in on.values():
            layer.send(name + "x", {})
        describe = {node.port: layer.slots.describe(layer.slots.canonical(next(
            slot for slot, owner in nodes.slot_owners(node).items() if owner == node.node_id)))
            for node in nodes.masters()}
        url = serve(layer)
        before = scrape(url)
        assert labelled(before, "asgi_redis_shard_up", "shard") == {shard: 1 for shard in describe.values()}
        assert labelled(before, "asgi_redis_channel_pending_messages", "channel") == {name: 1 for name in on.values()}

        nodes.kill_master(victim)
        after = scrape(url)  # still a scrape, with what the live masters hold
        assert labelled(after, "asgi_redis_shard_up", "shard") == {
            shard: 0 if port == victim.port else 1 for port, shard in describe.items()}
        assert labelled(after, "asgi_redis_channel_pending_messages", "channel") == {
            name: 1 for port, name in on.items() if port != victim.port}
        assert labelled(after, "asgi_redis_shard_round_trip_seconds", "shard").keys() == {
            shard for port, shard in describe.items() if port != victim.port}
    finally:
        layer.close()
        nodes.close()


# -- the command line -----------------------------------------------------------


def run_exporter(*args, cwd=ROOT):
    return subprocess.Popen(
        [sys.executable, "-m", "asgi_redis", "exporter", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd, env=cli_environment(),
    )


def served_url(process):
    """The /metrics URL from the exporter's first line of output."""
    banner = process.stdout.readline()
    assert banner.startswith("asgi-redis exporter: serving http://127.0.0.1:"), \
        (banner, "" if banner else process.stderr.read())
    return banner.split()[3]


def test_cli_serves_metrics_until_terminated(exp_layer, redis_shards):
    layer = exp_layer(*redis_shards)
    for number in range(3):
        layer.send("http.request", {"n": number})
    layer.group_add("chat", "daphne.response.x!1")
    location = ["--url", redis_shards[0].url, "--url", redis_shards[1].url,
                "--prefix", PREFIX, "--stats-prefix", STATS_PREFIX]
    process = run_exporter(*location, "--listen", "127.0.0.1:0", "--min-interval", "0")
    try:
        samples = scrape(served_url(process))
        assert value(samples, "asgi_redis_channel_pending_messages", channel="http.request") == 3
        assert value(samples, "asgi_redis_group_members", group="chat") == 1
        assert sorted(labelled(samples, "asgi_redis_shard_up", "shard").values()) == [1, 1]
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 143, process.stderr.read()  # SIGTERM unwound, server closed


def test_cli_reads_the_layer_from_django_settings(tmp_path, redis_server, exp_layer):
    package = tmp_path / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(
        "CHANNEL_LAYERS = {'events': {'BACKEND': 'asgi_redis.RedisChannelLayer', 'CONFIG': {"
        f"'hosts': [{redis_server.url!r}], 'prefix': {PREFIX!r}, 'stats_prefix': {STATS_PREFIX!r}, "
        "'expiry': 120}}}\n"
    )
    layer = exp_layer(expiry=120)
    layer.send("events.audit", {})
    process = run_exporter("--settings", "mysite.settings", "--alias", "events", "--listen", "127.0.0.1:0",
                           cwd=tmp_path)
    try:
        samples = scrape(served_url(process))
    finally:
        process.terminate()
        process.wait(30)
    assert value(samples, "asgi_redis_expiry_seconds") == 120
    assert value(samples, "asgi_redis_channel_pending_messages", channel="events.audit") == 1
    assert 0 <= value(samples, "asgi_redis_channel_oldest_message_age_seconds", channel="events.audit") < 60


def test_cli_usage_and_listen_errors(redis_server):
    bad = run_exporter("--url", redis_server.url, "--listen", "nowhere")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "HOST:PORT" in err and len(err.strip().splitlines()) == 1, err

    layer = RedisChannelLayer(hosts=[redis_server.url])
    taken = MetricsServer(LayerCollector(layer), "127.0.0.1", 0)
    try:
        port = taken.address[1]
        busy = run_exporter("--url", redis_server.url, "--listen", f"127.0.0.1:{port}")
        _, err = busy.communicate(timeout=60)
    finally:
        taken.close()
        layer.close()
    assert busy.returncode == 1, err
    assert err.strip().splitlines() == [err.strip()] and f"cannot listen on 127.0.0.1:{port}" in err, err
