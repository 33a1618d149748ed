"""asgi_redis.cluster against a real loopback Redis Cluster (tests/cluster.py):
hash slots, the slot map, routing by slot, one write per master, MOVED after a
migration, ASK and TRYAGAIN during one, a SIGKILLed master, startup node checks."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from asgi_redis.cluster import ClusterRouter, NotACluster, crc16, hash_tag, key_slot
from asgi_redis.cluster.slotmap import parse_shards, parse_slots
from asgi_redis.errors import LayerConnectionError
from asgi_redis.scripts import LuaScript

from .cluster import RedisCluster, free_cluster_port
from .servers import RedisProcess

INCR_SCRIPT = LuaScript("incr_test", b"return redis.call('INCR', KEYS[1])")
# writes, then keeps the node busy well past a 0.05 s socket timeout (a fixed amount of work,
# not a TIME loop: valkey freezes the clock a script sees, so such a loop would never end)
SLOW_INCR = LuaScript(
    "slow_incr_test",
    b"local value = redis.call('INCR', KEYS[1]); local x = 0; "
    b"for i = 1, 20000000 do x = x + i % 7 end; return value",
)
PAIR_SCRIPT = LuaScript("pair_test", b"return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}")


@pytest.fixture
def cluster(redis_cluster):
    return redis_cluster


@pytest.fixture
def router(cluster):
    made = []

    def build(**options):
        made.append(ClusterRouter([cluster.url], **options))
        return made[-1]

    yield build
    for one in made:
        one.close()


def keys_on(cluster, master, count, prefix="k"):
    """``count`` distinct keys whose slots ``master`` owns (by our own hash, checked elsewhere)."""
    owners = cluster.slot_owners(cluster.live_nodes()[0])
    found = []
    for number in range(100000):
        key = f"{prefix}:{number}"
        if owners[key_slot(key)] == master.node_id:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError("no keys found")


def test_crc16_and_hash_tags():
    assert crc16(b"123456789") == 0x31C3  # the CRC16/XMODEM check value
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # empty tag: the whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    with pytest.raises(TypeError, match="int"):
        key_slot(12)


def test_keyslot_matches_cluster_keyslot(cluster):
    rng = random.Random(7)
    keys = ["", "foo", "{}", "{a}", "a{b}c", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap",
            "é{ü}", "asgi:{!abc}:q", "x" * 300, "{" + "y" * 100 + "}z"]
    keys += ["".join(rng.choice("ab{}!?:x\u00e9") for _ in range(rng.randrange(1, 20))) for _ in range(300)]
    with cluster.nodes[0].client() as client:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("CLUSTER", "KEYSLOT", key)
        expected = pipe.execute()
    assert [key_slot(key) for key in keys] == expected
    assert [key_slot(key.encode("utf8")) for key in keys] == expected


def test_slot_map_matches_the_cluster(cluster, router):
    layer_router = router()
    owners = cluster.slot_owners(cluster.nodes[0])
    by_id = {node.node_id: ("127.0.0.1", node.port) for node in cluster.nodes}
    current = layer_router.slot_map
    assert all(current.owner(slot) == by_id[owners[slot]] for slot in range(16384))
    assert sorted(layer_router.masters()) == sorted(cluster.address(node) for node in cluster.masters())
    assert current.uncovered() == 0
    # CLUSTER SLOTS (servers without CLUSTER SHARDS) reads the same map
    with cluster.nodes[0].client() as client:
        from_slots = parse_slots(client.execute_command("CLUSTER", "SLOTS"), "127.0.0.1")
        if cluster.version() >= "7":
            from_shards = parse_shards(client.execute_command("CLUSTER", "SHARDS"), "127.0.0.1", False)
            assert from_shards.ranges() == current.ranges()
    assert from_slots.ranges() == current.ranges()
    # (replicas are only where to ask for a newer map: Redis 7.0 lists them oddly in both replies)


def test_calls_run_on_the_owning_master(cluster, router):
    layer_router = router()
    masters = cluster.masters()
    keys = [key for master in masters for key in keys_on(cluster, master, 2, prefix="own")]
    replies = layer_router.run([("SET", [key], ["v-" + key]) for key in keys], action="test")
    assert replies == [b"OK"] * len(keys)
    for key in keys:
        owner = cluster.master_of_slot(key_slot(key))
        for master in masters:
            with master.client() as client:
                try:
                    value = client.get(key)
                except redis.ResponseError as error:  # not this node's slot
                    assert master is not owner and str(error).startswith(f"{key_slot(key)} ")
                    continue
                assert master is owner and value == b"v-" + key.encode()


def test_one_write_per_master_whatever_the_number_of_slots(cluster, router, round_trips):
    layer_router = router()
    masters = cluster.masters()
    keys = [key for master in masters for key in keys_on(cluster, master, 4, prefix="trip")]
    assert len({key_slot(key) for key in keys}) > len(masters)  # several slots per master
    layer_router.run([("GET", [key], []) for key in keys])  # connected: handshakes are not counted
    round_trips.count = 0
    layer_router.run([("SET", [key], ["1"]) for key in keys])
    assert round_trips.count == len(masters)
    round_trips.count = 0
    layer_router.run([("GET", [keys[0]], [])])
    assert round_trips.count == 1


def test_script_loaded_in_the_same_write_after_noscript(cluster, router, round_trips):
    layer_router = router()
    key = keys_on(cluster, cluster.masters()[0], 1, prefix="script")[0]
    with cluster.master_of_slot(key_slot(key)).client() as client:
        client.script_flush()
    layer_router.run_one(("GET", [key], []))  # connected
    round_trips.count = 0
    assert layer_router.run_one((INCR_SCRIPT, [key], [])) == 1
    assert round_trips.count == 2  # EVALSHA -> NOSCRIPT (nothing ran); SCRIPT LOAD + EVALSHA
    round_trips.count = 0
    assert layer_router.run_one((INCR_SCRIPT, [key], [])) == 2
    assert round_trips.count == 1


def test_keys_of_one_call_must_share_a_slot(cluster, router, round_trips):
    layer_router = router()
    with pytest.raises(redis.ResponseError, match="CROSSSLOT|same slot"):  # the server's refusal: nothing ran
        layer_router.run([("MGET", ["a", "b"], [])])
    round_trips.count = 0
    with pytest.raises(ValueError, match="names no key"):
        layer_router.run([("PING", [], [])])
    assert round_trips.count == 0
    assert layer_router.run_one(("MGET", ["{t}a", "{t}b"], [])) == [None, None]


def test_a_call_that_timed_out_after_its_write_is_never_sent_again(cluster, router):
    layer_router = router(connection_kwargs={"socket_timeout": 0.05})
    key = keys_on(cluster, cluster.masters()[1], 1, prefix="slow")[0]
    with pytest.raises(LayerConnectionError, match="did not answer in time"):
        layer_router.run_one((SLOW_INCR, [key], []), action="send")
    owner = cluster.master_of_slot(key_slot(key))
    with owner.client() as client:
        deadline = time.monotonic() + 10
        while True:  # the node is busy with the script until it ends
            try:
                value = client.get(key)
                break
            except redis.ResponseError as error:
                assert "BUSY" in str(error) and time.monotonic() < deadline
                time.sleep(0.05)
    assert value == b"1"  # it ran, and once: its lost reply did not make us send it again


def test_startup_nodes_are_checked(cluster):
    for bad, words in [
        ([cluster.url + "/1"], "database 1"),
        ([cluster.url + "?db=2"], "database 2"),
        (["unix:///tmp/redis.sock"], "unix socket"),
        ([("127.0.0.1", 0)], "neither a redis URL"),
        ([42], "neither a redis URL"),
        (cluster.url, "not a single string"),
        ([], "empty"),
    ]:
        with pytest.raises(ValueError, match=words):
            ClusterRouter(bad)
    with pytest.raises(ValueError, match="only database 0"):
        ClusterRouter([cluster.url], connection_kwargs={"db": 3})


def test_a_standalone_server_is_refused_at_construction():
    server = RedisProcess()
    try:
        with pytest.raises(NotACluster, match=f"127.0.0.1:{server.port} is not in cluster mode"):
            ClusterRouter([server.url])
        assert issubclass(NotACluster, ValueError)
    finally:
        server.close()


def test_one_reachable_startup_node_is_enough(cluster):
    dead = f"redis://127.0.0.1:{free_cluster_port()}"
    layer_router = ClusterRouter([dead, cluster.url, ("127.0.0.1", cluster.nodes[1].port)])
    try:
        assert len(layer_router.masters()) == 3
        assert layer_router.run_one(("SET", ["{reach}k"], ["1"]))
    finally:
        layer_router.close()
    nobody = ClusterRouter([dead])  # nothing reachable: constructed; calls fail clearly
    try:
        with pytest.raises(LayerConnectionError, match="no Redis Cluster node answered"):
            nobody.run_one(("GET", ["x"], []))
    finally:
        nobody.close()


def test_moved_after_a_migration_refreshes_the_map_once(cluster, router, round_trips):
    layer_router = router()
    source = cluster.masters()[0]
    key = keys_on(cluster, source, 1, prefix="moved")[0]
    slot = key_slot(key)
    layer_router.run([("SET", [key], ["before"])] + [("GET", [other], []) for other in
                      (keys_on(cluster, node, 1, prefix="warm")[0] for node in cluster.masters())])
    target = next(node for node in cluster.masters() if node is not source)
    assert cluster.migrate_slot(slot, target) == 1
    generation = layer_router.generation
    round_trips.count = 0
    assert layer_router.run_one(("GET", [key], [])) == b"before"
    assert layer_router.generation == generation + 1
    assert round_trips.count == 3  # MOVED, the map, the call on the new owner
    assert layer_router.slot_map.owner(slot) == cluster.address(target)
    round_trips.count = 0
    layer_router.run_one(("SET", [key], ["after"]))
    assert round_trips.count == 1
    with target.client() as client:
        assert client.get(key) == b"after"


def test_ask_and_tryagain_during_a_migration(cluster, router):
    layer_router = router(tryagain_timeout=0.3)
    source = cluster.masters()[1]
    target = next(node for node in cluster.masters() if node is not source)
    tag = next(f"ask{n}" for n in range(10000)
               if cluster.master_of_slot(key_slot(f"ask{n}")) is source)
    slot = key_slot(tag)
    stay, moving, fresh = f"{{{tag}}}stay", f"{{{tag}}}moving", f"{{{tag}}}fresh"
    layer_router.run([("SET", [stay], ["s"]), ("SET", [moving], ["m"])])
    cluster.begin_migration(slot, target)
    try:
        with source.client() as client:
            client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", moving)
        # stay is still on the source, moving is on the target (ASK), fresh exists nowhere (ASK)
        assert layer_router.run([("GET", [stay], []), ("GET", [moving], []), ("SET", [fresh], ["f"])]) \
            == [b"s", b"m", b"OK"]
        with target.client() as client:
            client.execute_command("ASKING")
            assert client.get(fresh) == b"f"
        # a call over both keys finds them split: TRYAGAIN, nothing ran, then a clear error
        started = time.monotonic()
        with pytest.raises(LayerConnectionError, match="TRYAGAIN"):
            layer_router.run_one((PAIR_SCRIPT, [stay, moving], []))
        assert time.monotonic() - started < 5
        # the same call goes through once the migration ends while it waits
        done = []
        patient = router(tryagain_timeout=10)
        waiter = threading.Thread(target=lambda: done.append(patient.run_one((PAIR_SCRIPT, [stay, moving], []))))
        waiter.start()
        time.sleep(0.1)
        cluster.move_keys(slot, source, target)
    finally:
        cluster.finish_migration(slot, source, target)
    waiter.join(15)
    assert done == [[b"s", b"m"]]
    assert layer_router.run([("GET", [stay], []), ("GET", [moving], []), ("GET", [fresh], [])]) \
        == [b"s", b"m", b"f"]


def test_failover_fails_clearly_then_heals_without_restart():
    nodes = RedisCluster(masters=3, replicas=1)
    layer_router = ClusterRouter([nodes.url], connection_kwargs={"socket_timeout": 1.0,
                                                                 "socket_connect_timeout": 1.0})
    try:
        victim = nodes.masters()[2]
        key = keys_on(nodes, victim, 1, prefix="fail")[0]
        other = keys_on(nodes, nodes.masters()[0], 1, prefix="alive")[0]
        assert layer_router.run_one((INCR_SCRIPT, [key], [])) == 1
        nodes.replicas_of(victim)  # it has one
        deadline = time.monotonic() + 5
        while nodes.replicas_of(victim) and time.monotonic() < deadline:
            with victim.client() as client:  # wait until the replica has the write
                if client.execute_command("WAIT", 1, 100) >= 1:
                    break
        nodes.kill_master(victim)
        killed = time.monotonic()
        failures, slowest = [], 0.0
        while True:
            started = time.monotonic()
            try:
                value = layer_router.run_one((INCR_SCRIPT, [key], []), action="send")
                break
            except LayerConnectionError as error:
                failures.append(str(error))
            finally:
                slowest = max(slowest, time.monotonic() - started)
            assert time.monotonic() - killed < 30, failures[-3:]
            time.sleep(0.05)
        unavailable = time.monotonic() - killed
        assert failures and all("failed" in message for message in failures)
        assert slowest < 2.5  # never hangs past socket_timeout (+ connect) for one call
        assert value == 2  # the promoted replica had the first increment; nothing ran twice
        assert layer_router.run_one(("GET", [other], [])) is None
        new_master = nodes.master_of_slot(key_slot(key))
        assert new_master is not victim and layer_router.slot_map.owner(key_slot(key)) == nodes.address(new_master)
        print(f"\nfailover: unavailable {unavailable:.2f} s, {len(failures)} failed calls")
    finally:
        layer_router.close()
        nodes.close()


def test_slot_map_replies_in_both_protocols_and_unknown_endpoints():
    # RESP2 gives flat [name, value, ...] lists where RESP3 gives maps; "?" or "" as
    # an endpoint means "the host you asked"; a TLS client takes the TLS port
    node = [b"id", b"a" * 40, b"port", 7000, b"tls-port", 7100, b"ip", b"10.0.0.1", b"endpoint", b"?",
            b"role", b"master", b"health", b"online"]
    replica = {b"id": b"b" * 40, b"port": 7001, b"ip": b"10.0.0.2", b"endpoint": b"replica.example",
               b"role": b"replica", b"health": b"online"}
    shards = [[b"slots", [0, 99, 200, 16383], b"nodes", [node, replica]]]
    plain = parse_shards(shards, "asked.example", tls=False)
    assert plain.ranges() == [(0, 99, ("asked.example", 7000)), (200, 16383, ("asked.example", 7000))]
    assert plain.owner(150) is None and plain.uncovered() == 100
    assert plain.replicas[("asked.example", 7000)] == [("replica.example", 7001)]
    assert parse_shards(shards, "asked.example", tls=True).owner(0) == ("asked.example", 7100)
    slots = [[0, 16383, [b"", 7000, b"a" * 40], [b"10.0.0.2", 7001, b"b" * 40]]]
    assert parse_slots(slots, "asked.example").owner(5) == ("asked.example", 7000)
    moved = plain.moved(150, ("10.0.0.9", 7009))
    assert moved.owner(150) == ("10.0.0.9", 7009) and plain.owner(150) is None  # a copy
    assert moved.first_slot_of_owner(16000) == 0 and moved.first_slot_of_owner(150) == 150
