"""RedisSentinelChannelLayer against a real Sentinel topology on loopback:
configuration, discovery, sharding over services, master caching, the
conformance suite, a demotion and a real failover (master killed by pid).

Failover figures are printed; run with ``-s`` to see them.
"""

import asyncio
import threading
import time

import pytest
import redis
from redis.connection import SSLConnection

from asgi_redis import LayerConnectionError, RedisSentinelChannelLayer, retry
from asgi_redis.connections import shard_index
from asgi_redis.sentinel import SentinelShards, parse_sentinel_hosts

from .helpers import built_layers, check_send_and_receive_cost_one_round_trip_each
from .layer_conformance import LayerConformance, on_layout
from .servers import free_port
from .topology import SentinelTopology

SERVICES = ["svc-a", "svc-b"]


@pytest.fixture(scope="module")
def topology():
    """Masters, replicas and sentinels for SERVICES, each stopped by its pid after the module."""
    topology = SentinelTopology(SERVICES)
    yield topology
    topology.close()


@pytest.fixture
def make_layer(topology):
    """Sentinel layers on the test topology, flushed before and after."""
    yield from built_layers(
        RedisSentinelChannelLayer, hosts=topology.sentinel_addresses, expiry=60, group_expiry=60
    )


def _raw(address):
    return redis.Redis(host=address[0], port=address[1], socket_timeout=5)


def _names_per_shard(pattern, count=2):
    """Channel names covering every shard of a ``count``-service layer."""
    names = {}
    n = 0
    while len(names) < count:
        name = pattern % n
        names.setdefault(shard_index(name, count), name)
        n += 1
    return [names[index] for index in range(count)]


# -- configuration, no server needed --------------------------------------------


def test_sentinel_address_forms():
    parsed = parse_sentinel_hosts([
        ("10.0.0.1", 26379),
        "sentinel-2:26380",
        "sentinel-3",
        "[::1]:26381",
        "redis+sentinel://user:p%40ss@s4:1,s5:2",
    ])
    assert parsed == [
        (("10.0.0.1", 26379), {}),
        (("sentinel-2", 26380), {}),
        (("sentinel-3", 26379), {}),
        (("::1", 26381), {}),
        (("s4", 1), {"username": "user", "password": "p@ss"}),
        (("s5", 2), {"username": "user", "password": "p@ss"}),
    ]
    assert parse_sentinel_hosts(None) == [(("localhost", 26379), {})]


@pytest.mark.parametrize("hosts, named", [
    ("localhost:26379", "localhost:26379"),
    ([], "empty"),
    (42, "42"),
    (["redis://localhost:6379"], "redis://localhost:6379"),
    (["host:port"], "host:port"),
    (["host:70000"], "host:70000"),
    (["a b:1"], "a b:1"),
    ([("host", "26379")], "26379"),
    ([("host", 26379, 1)], "1)"),
    ([None], "None"),
    (["redis+sentinel://h:1/mymaster"], "services"),
])
def test_bad_hosts(hosts, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        RedisSentinelChannelLayer(hosts=hosts, services=["svc"])


@pytest.mark.parametrize("config, named", [
    ({"services": "svc-a"}, "svc-a"),
    ({"services": ["svc", ""]}, "''"),
    ({"services": ["svc", 3]}, "3"),
    ({"services": ["svc", "svc"]}, "twice"),
    ({"services": {"svc": 1}}, "svc"),
    ({"sentinel_refresh_interval": -1}, "-1"),
    ({"sentinel_refresh_interval": "5"}, "'5'"),
    ({"sentinel_refresh_interval": True}, "True"),
    ({"sentinel_kwargs": "password"}, "password"),
    ({"sentinel_kwargs": {"port": 1}}, "port"),
    ({"sentinel_kwargs": {"no_such_option": 1}}, "no_such_option"),
    ({"connection_kwargs": {"no_such_option": 1}}, "no_such_option"),
    ({"connection_kwargs": {"host": "x"}}, "host"),
])
def test_bad_config(config, named):
    config.setdefault("services", ["svc"])
    with pytest.raises(ValueError, match=named):
        RedisSentinelChannelLayer(**config)


def test_defaults_and_clients():
    """Explicit services need no network at construction; one client per
    service, built once, retrying only what cannot duplicate a message."""
    layer = RedisSentinelChannelLayer(
        services=["one", "two"],
        connection_kwargs={"password": "master-secret"},
        sentinel_kwargs={"password": "sentinel-secret"},
    )
    shards = layer.shards
    assert isinstance(shards, SentinelShards)
    assert layer.services == ["one", "two"] and len(shards) == 2
    assert shards.sentinels.addresses == ["localhost:26379"]
    assert layer.sentinel_refresh_interval == 0
    client = shards.client(0)
    assert shards.client(0) is client and shards.clients()[0] is client
    pool_kwargs = client.connection_pool.connection_kwargs
    assert isinstance(pool_kwargs["retry"], retry.SafeRetry)
    assert issubclass(client.connection_pool.connection_class, retry.tracked_connection_class(
        client.connection_pool.connection_class))
    assert pool_kwargs["password"] == "master-secret"
    assert pool_kwargs["socket_timeout"] and pool_kwargs["socket_connect_timeout"]
    [sentinel] = shards.sentinels._clients
    sentinel_kwargs = sentinel.connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] == "sentinel-secret"
    assert sentinel_kwargs["retry"]._retries == 0
    assert "service 'one'" in repr(layer)
    layer.close()
    tls = RedisSentinelChannelLayer(
        services=["one"], connection_kwargs={"ssl": True, "ssl_cert_reqs": "none"}, sentinel_kwargs={"ssl": True}
    )
    assert issubclass(tls.shards.client(0).connection_pool.connection_class, SSLConnection)
    assert issubclass(tls.shards.sentinels._clients[0].connection_pool.connection_class, SSLConnection)


# -- against the topology ----------------------------------------------------------


def test_discovery(make_layer, topology):
    layer = make_layer()
    assert layer.services == SERVICES  # sorted: every process agrees on the shard order
    layer.send("discovered", {"n": 1})
    assert layer.receive(["discovered"]) == ("discovered", {"n": 1})


def test_discovery_tries_each_sentinel(make_layer, topology):
    dead = ("127.0.0.1", free_port())
    layer = make_layer(hosts=[dead, *topology.sentinel_addresses])
    assert layer.services == SERVICES


def test_discovery_error_names_every_sentinel():
    dead = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    with pytest.raises(LayerConnectionError) as caught:
        RedisSentinelChannelLayer(hosts=dead)
    for host, port in dead:
        assert f"{host}:{port}" in str(caught.value)


def test_sentinel_kwargs_go_to_sentinels_only(make_layer, topology):
    layer = make_layer(
        services=["svc-a"],
        sentinel_kwargs={"client_name": "to-sentinel"},
        connection_kwargs={"client_name": "to-master"},
    )
    layer.shards.connection_failed(0)
    layer.shards.client(0).connection_pool.disconnect()
    layer.send("chan?1", {})  # a new connection: a look-up, then the master

    def names(address):
        with _raw(address) as raw:
            return {client["name"] for client in raw.client_list()}

    on_sentinels = set().union(*(names(address) for address in topology.sentinel_addresses))
    on_master = names(topology.master_address("svc-a"))
    assert "to-sentinel" in on_sentinels and "to-master" not in on_sentinels
    assert "to-master" in on_master and "to-sentinel" not in on_master


def test_explicit_service(make_layer, topology):
    layer = make_layer(services=["svc-b"])
    layer.send("only?b", {"n": 1})
    layer.group_add("room", "only?b")
    with _raw(topology.master_address("svc-b")) as raw:
        assert raw.llen("asgi:only?b") == 1 and raw.zcard("asgi::group:room") == 1
    with _raw(topology.master_address("svc-a")) as raw:
        assert raw.exists("asgi:only?b", "asgi::group:room") == 0
    assert layer.receive(["only?b"]) == ("only?b", {"n": 1})


def test_unknown_service(topology):
    layer = RedisSentinelChannelLayer(hosts=topology.sentinel_addresses, services=["no-such-service"])
    with pytest.raises(LayerConnectionError, match="no-such-service") as caught:
        layer.send("chan?x", {})
    for address in topology.sentinel_addresses:
        assert "{}:{}".format(*address) in str(caught.value)
    layer.close()


def test_sharding_over_services(make_layer, topology):
    layer = make_layer(services=SERVICES)
    names = _names_per_shard("shard?%d")
    groups = _names_per_shard("group%d")
    for index, (name, group) in enumerate(zip(names, groups)):
        layer.send(name, {"shard": index})
        layer.group_add(group, name)
    for index, service in enumerate(SERVICES):
        with _raw(topology.master_address(service)) as raw:
            assert raw.llen(f"asgi:{names[index]}") == 1
            assert raw.llen(f"asgi:{names[1 - index]}") == 0
            assert raw.zcard(f"asgi::group:{groups[index]}") == 1
    for index, name in enumerate(names):
        assert layer.receive([name]) == (name, {"shard": index})
    # normal channels go to each service in turn
    for n in range(4):
        layer.send("spread", {"n": n})
    for service in SERVICES:
        with _raw(topology.master_address(service)) as raw:
            assert raw.llen("asgi:spread") == 2
    assert layer.global_statistics()["messages_count"] == 6


def _count_lookups(layer):
    shards = layer.shards
    original = shards.sentinels.master_address
    calls = []

    def counting(service):
        calls.append(service)
        return original(service)

    shards.sentinels.master_address = counting
    return calls


def test_refresh_zero_asks_per_connection(make_layer):
    layer = make_layer(services=["svc-a"])
    lookups = _count_lookups(layer)
    layer.send("c?1", {})
    assert lookups == []  # the flush connection is still open and trusted
    layer.shards.client(0).connection_pool.disconnect()
    layer.send("c?1", {})
    layer.send("c?1", {})
    assert lookups == ["svc-a"]


def test_refresh_interval_caches(make_layer):
    layer = make_layer(services=["svc-a"], sentinel_refresh_interval=0.5)
    lookups = _count_lookups(layer)
    layer.shards.client(0).connection_pool.disconnect()
    layer.send("c?1", {})  # a new connection within the interval: cached master
    assert lookups == []
    time.sleep(0.6)
    layer.send("c?1", {})  # interval over: one look-up, then cached again
    layer.send("c?1", {})
    assert lookups == ["svc-a"]
    layer.shards.connection_failed(0)  # what a connection or READONLY error does
    layer.send("c?1", {})
    assert lookups == ["svc-a", "svc-a"]


@pytest.mark.parametrize("layout", ["classic", "compact"])
def test_round_trips(make_layer, round_trips, layout):
    """The core's budgets hold: a warm Sentinel connection costs nothing extra."""
    layer = make_layer(services=["svc-a"], layout=layout)
    layer.send("warm", {})
    layer.receive(["warm"])
    layer.group_add("g", "chan?1")
    layer.send_group("g", {})
    layer.receive(["chan?1"])
    check_send_and_receive_cost_one_round_trip_each(layer, round_trips, "chan?1")
    layer.send_group("g", {"b": 2})
    assert round_trips.count == 2


def test_receive_async(make_layer):
    layer = make_layer(services=SERVICES)
    assert "asyncio" in layer.extensions

    async def scenario():
        waiting = asyncio.ensure_future(layer.receive_async(["async?1"]))
        await asyncio.sleep(0.1)
        layer.send("async?1", {"n": 1})
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(scenario()) == ("async?1", {"n": 1})


class TestSentinelConformance(LayerConformance):
    layer_class = RedisSentinelChannelLayer

    @staticmethod
    def layer_config(topology):
        return {"hosts": topology.sentinel_addresses, "services": ["svc-a"]}


class TestSentinelShardedConformance(LayerConformance):
    """Both services; capacity is per shard for normal channels, as in
    test_conformance's TestSharded."""

    layer_class = RedisSentinelChannelLayer
    capacity_limit = None

    @staticmethod
    def layer_config(topology):
        return {"hosts": topology.sentinel_addresses}


# -- failover ------------------------------------------------------------------------


class Receiver(threading.Thread):
    """Blocking receives in a loop, as a worker does; records what happens when."""

    def __init__(self, layer, channel):
        super().__init__(daemon=True)
        self.layer, self.channel = layer, channel
        self.messages, self.errors = [], []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                channel, message = self.layer.receive([self.channel], block=True)
            except LayerConnectionError as error:
                self.errors.append((time.monotonic(), error))
                time.sleep(0.05)
                continue
            if message is not None:
                self.messages.append((time.monotonic(), message))

    def stop(self):
        self.stopping.set()
        try:
            self.layer.send(self.channel, {"stop": True})  # end its long BLPOP
        except LayerConnectionError:
            pass
        self.join(30)
        assert not self.is_alive(), "a blocked receive hung"


@pytest.fixture
def start_receiver():
    started = []

    def start(layer, channel):
        receiver = Receiver(layer, channel)
        receiver.start()
        started.append(receiver)
        time.sleep(0.2)  # let it block
        return receiver

    yield start
    for receiver in started:  # before make_layer closes the layers under them
        receiver.stop()


def _wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _after_switch(operation, *args):
    """Run ``operation`` as a worker would during a switch: a clear connection
    error at worst, for a bounded number of tries (one per stale connection)."""
    for _ in range(3):
        try:
            return operation(*args)
        except LayerConnectionError as error:
            assert "demoted" in str(error) or "read-only" in str(error), error
    return operation(*args)


def _blocking_layer(make_layer, **config):
    # a long BLPOP, so a receiver that wakes early was woken by the failover
    layer = make_layer(connection_kwargs={"socket_timeout": 40}, **config)
    layer.blpop_timeout = 30
    return layer


def test_demoted_master(make_layer, topology, start_receiver):
    """A switch the layer's connections do not see (the old master lives on),
    then its demotion: READONLY and UNBLOCKED make the layer move at once."""
    topology.wait_healthy()
    service = "svc-b"
    trusting = _blocking_layer(make_layer, services=[service], sentinel_refresh_interval=30)
    refreshing = make_layer(services=[service], sentinel_refresh_interval=0.5)
    per_operation = make_layer(services=[service])
    for layer in (trusting, refreshing, per_operation):
        layer.send("warm?x", {})
        layer.receive(["warm?x"])
    per_operation.group_add("room", "member?1")
    old = topology.master_address(service)
    with _raw(old) as raw:
        assert raw.execute_command("WAIT", 1, 5000) == 1
    receiver = start_receiver(trusting, "wake?1")

    topology.manual_failover(service)
    new = topology.wait_promoted(service, old)
    time.sleep(0.6)
    # the periodic check found the new master although the old one still answers
    refreshing.send("moved?1", {"n": 1})
    with _raw(new) as raw:
        assert raw.llen("asgi:moved?1") == 1

    # what Sentinel does to the old master a few seconds later
    demoted_at = time.monotonic()
    with _raw(old) as raw:
        raw.execute_command("REPLICAOF", *new)
    _wait_until(lambda: receiver.errors, 10, "the blocked receiver to wake")
    woke_after = receiver.errors[0][0] - demoted_at

    for n in range(3):
        _after_switch(trusting.send, "after?1", {"n": n})
    assert [trusting.receive(["after?1"])[1]["n"] for _ in range(3)] == [0, 1, 2]
    assert trusting.group_channels("room") == ["member?1"]
    _after_switch(per_operation.send_group, "room", {"to": "all"})
    assert trusting.receive(["member?1"]) == ("member?1", {"to": "all"})
    per_operation.send("wake?1", {"wake": True})
    _wait_until(lambda: receiver.messages, 10, "the receiver to get a message from the new master")
    print(f"\n[sentinel] demotion: blocked receiver woke after {woke_after:.2f} s")
    assert woke_after < 10  # its BLPOP would have lasted 30 s


@pytest.mark.parametrize("service, refresh", [("svc-a", 0), ("svc-b", 300)])
def test_master_killed(make_layer, topology, start_receiver, service, refresh):
    topology.wait_healthy()
    layer = _blocking_layer(make_layer, services=[service], sentinel_refresh_interval=refresh)
    layer.group_add("room", "member?1")
    for n in range(10):
        layer.send("work?q", {"n": n})
    before = [layer.receive(["work?q"])[1]["n"] for _ in range(5)]
    assert before == [0, 1, 2, 3, 4]
    old_master = topology.master(service)
    with old_master.client() as raw:
        assert raw.execute_command("WAIT", 1, 5000) == 1  # the replica has all of it
    receiver = start_receiver(layer, "wake?1")

    killed_at = time.monotonic()
    old_master.kill()
    failures, sent = 0, []
    while len(sent) < 5:
        try:
            layer.send("work?q", {"n": 100 + len(sent)})
        except LayerConnectionError:
            failures += 1
            assert time.monotonic() - killed_at < 40, "the layer never followed the new master"
            time.sleep(0.05)
            continue
        if not sent:
            back_at = time.monotonic()
        sent.append(100 + len(sent))
    new = topology.wait_promoted(service, old_master.address)

    _wait_until(lambda: receiver.errors, 10, "the blocked receiver to wake")
    woke_after = receiver.errors[0][0] - killed_at
    layer.send("wake?1", {"wake": True})
    _wait_until(lambda: receiver.messages, 10, "the receiver to get a message from the new master")

    received = []
    while True:
        _, message = layer.receive(["work?q"])
        if message is None:
            break
        received.append(message["n"])
    assert len(received) == len(set(received)), f"delivered twice: {received}"
    assert not set(received) & set(before)
    assert received == [5, 6, 7, 8, 9] + sent  # replicated before the kill, then after promotion
    assert layer.group_channels("room") == ["member?1"]
    layer.send_group("room", {"to": "all"})
    assert layer.receive(["member?1"]) == ("member?1", {"to": "all"})
    print(f"\n[sentinel] master of {service} killed (refresh {refresh} s): layer unavailable "
          f"{back_at - killed_at:.2f} s ({failures} failed sends); blocked receiver woke after "
          f"{woke_after:.2f} s")
    assert woke_after < 10  # its BLPOP would have lasted 30 s
    topology.revive_as_replica(old_master, new)


class TestSentinelCompactConformance(TestSentinelConformance):
    layer_config = on_layout(TestSentinelConformance.layer_config, "compact")


class TestSentinelShardedCompactConformance(TestSentinelShardedConformance):
    layer_config = on_layout(TestSentinelShardedConformance.layer_config, "compact")
