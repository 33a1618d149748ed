"""The compact layout (layout="compact"), read from the raw keys: names, types,
TTLs and hash slots, the entry format, fan-out of send_group entries, expiry,
capacity, statistics, versioning and round trips counted at the socket."""

import threading
import time

import pytest

from asgi_redis import LayerConnectionError, RedisChannelLayer, scripts
from asgi_redis.layouts import compact as compact_layout
from asgi_redis.layouts import get_layout
from asgi_redis.layouts.base import Call, LayoutMismatch, LayoutSettings
from asgi_redis.layouts.compact import FANOUT_CHUNK
from asgi_redis.layouts.slots import crc16, key_slot, slot_tag

from .helpers import built_layers
from .servers import free_port


@pytest.fixture
def make_compact(redis_server):
    yield from built_layers(RedisChannelLayer, hosts=[redis_server.url], expiry=1, group_expiry=2, layout="compact")


@pytest.fixture
def compact(make_compact):
    return make_compact(expiry=30)


def _parts(command):
    return command if isinstance(command, list) else [command]


def _sent(round_trips):
    return b" ".join(part for command in round_trips.commands for part in _parts(command))


# -- slots ------------------------------------------------------------------------


def test_crc16_and_slots_match_redis_cluster():
    assert crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    assert key_slot(b"foo") == 12182  # CLUSTER KEYSLOT foo
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key hashes
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")
    for slot in (0, 1, 12182, 16383):
        assert key_slot(b"x{" + slot_tag(slot) + b"}y") == slot


def test_every_call_touches_one_slot(compact):
    layout = compact.layout
    runs = [("chat!", [b"a"]), ("reply?abc", [b"b"]), ("http.request", [b"c"]), ("other.normal", [b"d"])]
    # a plain Redis: one call for all runs, each run's three keys in one slot
    [send] = layout.send_calls(runs)
    triples = [send.keys[i:i + 3] for i in range(0, len(send.keys), 3)]
    assert len(triples) == 4 and all(len({key_slot(key) for key in keys}) == 1 for keys in triples)
    layout.split_by_slot = True  # what a cluster layer sets
    try:
        calls = layout.send_calls(runs)
        # both normal channels share their bucket's slot: one call for the two of them
        assert len(calls) == 3
        calls += layout.group_add_ops("grp", "chat!x", 1.0) + layout.group_members_ops("grp", 1.0)
        calls += layout.channel_stats_ops("chat!") + layout.channel_stats_ops("http.request")
        for call in calls:
            keys = call.keys if isinstance(call, Call) else [call.args[1]]
            assert len({key_slot(key) for key in keys}) == 1, keys
        keys = [layout.queue_key(name) for name in ("chat!", "http.request", "other.normal")]
        assert [len(group) for group in layout.group_keys(keys)] == [1, 2]  # one pop / BLPOP per slot
    finally:
        layout.split_by_slot = False


def test_split_calls_run_on_a_server(compact, raw):
    compact.layout.split_by_slot = True
    try:
        for n in range(3):
            compact.group_add("g", f"proc{n}!a")
        compact.group_add("g", "chan")
        compact.send_group("g", {"x": 1})
        got = {compact.receive([name])[0] for name in ("proc0!", "proc1!", "proc2!", "chan")}
        assert got == {"proc0!a", "proc1!a", "proc2!a", "chan"}
        assert compact.global_statistics()["messages_count"] == 4
    finally:
        compact.layout.split_by_slot = False


def test_prefix_with_a_brace_is_refused(redis_server):
    with pytest.raises(ValueError, match="brace"):
        RedisChannelLayer(hosts=[redis_server.url], layout="compact", prefix="asgi{x}:")


def test_unknown_layout_names_the_choices(redis_server):
    with pytest.raises(ValueError, match=r"\['classic', 'compact'\].*'tiny'"):
        RedisChannelLayer(hosts=[redis_server.url], layout="tiny")


# -- raw keys -----------------------------------------------------------------------


def test_keys_types_and_ttls(compact, raw):
    compact.send("http.request", {"n": 1})
    compact.send("reply?abc", {"n": 2})
    compact.send("daphne.response.p1!x", {"n": 3})
    compact.group_add("room", "daphne.response.p1!x")
    queues = {
        b"asgi:c1{#0}http.request": "http.request",
        b"asgi:c1{reply?abc}": "reply?abc",
        b"asgi:c1{daphne.response.p1!}": "daphne.response.p1!",
    }
    for key, name in queues.items():
        assert raw.type(key) == b"list" and raw.llen(key) == 1
        assert 90_000 < raw.pttl(key) <= 91_000  # expiry + 1 s + the refresh slack
        assert compact.layout.channel_of(key) == name
        stats = b"asgi-meta:c1" + key[len(b"asgi:c1"):]
        assert raw.hgetall(stats) == {b"messages_count": b"1"}
        assert 3650 < raw.ttl(stats) <= 3660
    assert raw.type(b"asgi:c1{room}:group") == b"zset"
    globals_ = raw.keys("asgi-meta:c1{#???}#global")
    assert len(globals_) == 3  # one per slot that was sent to
    assert all(86450 < raw.ttl(key) <= 86460 for key in globals_)
    assert sorted(key for key in raw.keys("*")) == sorted(
        [*queues, *(b"asgi-meta:c1" + key[len(b"asgi:c1"):] for key in queues), b"asgi:c1{room}:group", *globals_]
    )


def test_entry_holds_the_message_and_its_deadline(compact, raw):
    before = int(time.time() * 1000)
    compact.send("proc!a", {"text": "hi"})
    entry = raw.lindex("asgi:c1{proc!}", 0)
    assert entry[:1] == b"1" and entry[14:15] == b"m"
    assert before + 30_000 <= int(entry[1:14]) <= int(time.time() * 1000) + 30_000
    assert compact.serializer.decode(entry[15:]) == {"text": "hi", "__asgi_channel__": "proc!a"}


def test_flush_leaves_other_layouts_keys(compact, raw, make_layer):
    classic = make_layer()
    classic.send("shared", {"from": "classic"})
    compact.send("shared", {"from": "compact"})
    # neither sees the other's messages (different key names), nothing mixes
    assert compact.receive(["shared"]) == ("shared", {"from": "compact"})
    assert compact.receive(["shared"]) == (None, None)
    compact.send("shared", {"from": "compact"})
    compact.flush()
    assert raw.llen("asgi:shared") == 1
    assert classic.receive(["shared"]) == ("shared", {"from": "classic"})


def test_an_entry_of_another_layout_is_refused_loudly(compact, raw):
    raw.rpush("asgi:c1{proc!}", b"2" + b"9" * 13 + b"m" + b"future format")
    with pytest.raises(LayoutMismatch, match="compact layout version 1"):
        compact.receive(["proc!"])
    raw.rpush("asgi:c1{proc!}", b"not an entry at all")
    with pytest.raises(LayoutMismatch):
        compact.receive(["proc!"], block=True)


# -- expiry and capacity --------------------------------------------------------------


def test_expired_entries_are_never_delivered(make_compact, raw):
    layer = make_compact(expiry=1)
    layer.send("chan", {"n": 1})
    layer.send("proc!a", {"n": 2})
    time.sleep(1.05)  # past the deadline, the queues (expiry + 1 s) still hold them
    assert raw.llen("asgi:c1{#0}chan") == 1
    assert layer.receive(["chan"]) == (None, None)
    assert raw.llen("asgi:c1{proc!}") == 1
    assert layer.receive(["proc!"], block=True) == (None, None)  # the BLPOP path drops it too


def test_expired_entries_do_not_count_against_capacity(make_compact, raw):
    layer = make_compact(capacity=2, expiry=1)
    layer.send("chan", {"n": 1})
    layer.send("chan", {"n": 2})
    time.sleep(1.05)
    layer.send("chan", {"n": 3})
    assert raw.llen("asgi:c1{#0}chan") == 1
    assert layer.receive(["chan"]) == ("chan", {"n": 3})


def _calls(raw, *names):
    stats = raw.info("commandstats")
    return [stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names]


@pytest.mark.parametrize("capacity", [10, 500])
def test_refused_send_work_does_not_grow_with_capacity(make_compact, raw, capacity):
    layer = make_compact(capacity=capacity, expiry=60)
    for n in range(capacity):
        layer.send("full", {"n": n})
    raw.config_resetstat()
    for _ in range(20):
        with pytest.raises(layer.ChannelFull):
            layer.send("full", {})
    # push, look at the head once, take our entry back: never a scan
    assert _calls(raw, "rpush", "lindex", "rpop", "lrange", "lpop") == [20, 20, 20, 0, 0]
    assert raw.llen("asgi:c1{#0}full") == capacity


def test_send_group_entry_counts_once_against_capacity(compact, raw):
    layer = compact
    for n in range(5):
        layer.group_add("g", f"proc!{n}")
    layer.capacity = 1
    layer.channel_capacity.default = 1
    layer.send_group("g", {"first": 1})  # one entry naming five members
    assert raw.llen("asgi:c1{proc!}") == 1
    layer.send_group("g", {"second": 2})  # no room: all five skipped, counted as five
    assert layer.channel_statistics("proc!0")["channel_full_count"] == 5
    got = [layer.receive(["proc!"]) for _ in range(6)]
    assert got == [(f"proc!{n}", {"first": 1}) for n in range(5)] + [(None, None)]


# -- send_group fan-out -----------------------------------------------------------------


def test_send_group_stores_one_entry_per_process(compact, raw):
    members = [f"daphne.response.p1!{n}" for n in range(3)] + [f"daphne.response.p2!{n}" for n in range(2)]
    for channel in [*members, "reply?x", "http.request"]:
        compact.group_add("room", channel)
    compact.send_group("room", {"text": "hello"})
    assert raw.llen("asgi:c1{daphne.response.p1!}") == 1
    assert raw.llen("asgi:c1{daphne.response.p2!}") == 1
    assert raw.llen("asgi:c1{reply?x}") == 1 and raw.llen("asgi:c1{#0}http.request") == 1
    entry = raw.lindex("asgi:c1{daphne.response.p1!}", 0)
    assert entry[14:15] == b"f" and entry[15:entry.index(b"\n")] == b"0,1,2"
    # in member order, each once, then nothing
    got = [compact.receive(["daphne.response.p1!"]) for _ in range(4)]
    assert got == [(f"daphne.response.p1!{n}", {"text": "hello"}) for n in range(3)] + [(None, None)]
    assert compact.receive(["daphne.response.p2!"], block=True) == ("daphne.response.p2!0", {"text": "hello"})
    assert compact.receive(["daphne.response.p2!"], block=True) == ("daphne.response.p2!1", {"text": "hello"})
    assert compact.global_statistics()["messages_count"] == 7


def test_fan_out_keeps_order_across_entries(compact):
    for n in range(3):
        compact.group_add("g", f"proc!{n}")
    for seq in range(4):
        compact.send_group("g", {"seq": seq})
        compact.send(f"proc!{seq % 3}", {"direct": seq})
    got = []
    while True:
        channel, message = compact.receive(["proc!"])
        if channel is None:
            break
        got.append((channel, message))
    expected = []
    for seq in range(4):
        expected += [(f"proc!{n}", {"seq": seq}) for n in range(3)] + [(f"proc!{seq % 3}", {"direct": seq})]
    assert got == expected


def test_fan_out_buffer_is_bounded_and_lost_with_its_process(make_compact, raw):
    sender = make_compact(expiry=30, capacity=10)
    receiver = make_compact(expiry=30)
    other = make_compact(expiry=30)  # a second process on the same queue
    members = FANOUT_CHUNK + 5
    pipe = raw.pipeline()
    for n in range(members):
        pipe.zadd("asgi:c1{g}:group", {f"proc!{n}": time.time()})
    pipe.execute()
    sender.send_group("g", {"hi": 1})
    assert raw.llen("asgi:c1{proc!}") == 2  # members split into entries of FANOUT_CHUNK
    assert receiver.receive(["proc!"]) == ("proc!0", {"hi": 1})
    assert receiver.layout.pending_count() == FANOUT_CHUNK - 1  # one entry's rest, no more
    # the second process never sees what the first one holds
    assert other.receive(["proc!"]) == (f"proc!{FANOUT_CHUNK}", {"hi": 1})
    receiver.close()  # the holder "dies": its buffered members are lost, never repeated
    del receiver
    seen = set()
    while True:
        channel, _ = other.receive(["proc!"])
        if channel is None:
            break
        seen.add(channel)
    assert seen == {f"proc!{n}" for n in range(FANOUT_CHUNK + 1, members)}


def test_fan_out_of_an_encrypted_entry_with_rotated_keys(make_compact, raw):
    old = make_compact(expiry=30, symmetric_encryption_keys=["old key"])
    new = make_compact(expiry=30, symmetric_encryption_keys=["new key", "old key"])
    for n in range(3):
        old.group_add("g", f"proc!{n}")
    old.send_group("g", {"secret": "s"})
    entry = raw.lindex("asgi:c1{proc!}", 0)
    assert b"secret" not in entry
    assert [new.receive(["proc!"]) for _ in range(3)] == [(f"proc!{n}", {"secret": "s"}) for n in range(3)]
    new.send("proc!9", {"rotated": True})
    assert old.receive(["proc!"]) == (None, None)  # old key only: cannot read new-key bodies
    assert old.undecodable_count == 1


def test_group_expiry(make_compact):
    layer = make_compact(group_expiry=1)
    layer.group_add("g", "chan")
    time.sleep(1.1)
    layer.send_group("g", {})
    assert layer.receive(["chan"]) == (None, None)
    assert layer.group_channels("g") == []


# -- statistics ---------------------------------------------------------------------------------


def test_statistics_figures(make_compact):
    layer = make_compact(capacity=2, expiry=30)
    layer.send("chan", {})
    layer.send("chan", {})
    with pytest.raises(layer.ChannelFull):
        layer.send("chan", {})
    layer.send("reply?a", {})
    stats = layer.channel_statistics("chan")
    assert stats == {"messages_count": 2, "messages_pending": 2, "messages_max_age": 0, "channel_full_count": 1}
    assert layer.global_statistics() == {"messages_count": 3, "channel_full_count": 1}
    assert layer.channel_statistics("nothing.here") == {
        "messages_count": 0, "messages_pending": 0, "messages_max_age": 0, "channel_full_count": 0}


def test_oldest_age_skips_expired_entries(make_compact, raw):
    layer = make_compact(expiry=3)
    now = int(time.time() * 1000)
    raw.rpush("asgi:c1{#0}aged", b"1%013dm" % (now - 1) + b"x")  # expired
    raw.rpush("asgi:c1{#0}aged", b"1%013dm" % (now + 1000) + b"x")  # sent 2 s ago
    assert layer.channel_statistics("aged")["messages_max_age"] == 2


# -- round trips ----------------------------------------------------------------------------------


def test_round_trips(compact, round_trips):
    compact.send("warm", {})
    compact.receive(["warm", "warm!"])  # learns whether the server has LMPOP (Redis 7+)
    compact.group_add("warm", "warm")
    compact.send_group("warm", {})
    compact.receive(["warm"])
    round_trips.count = 0
    compact.send("chan", {"a": 1})
    assert round_trips.count == 1
    round_trips.count = 0
    assert compact.receive(["chan", "proc!"]) == ("chan", {"a": 1})
    assert round_trips.count == 1
    compact.send("proc!x", {"a": 2})
    round_trips.count = 0
    assert compact.receive(["chan", "proc!"], block=True) == ("proc!x", {"a": 2})
    assert round_trips.count == 1  # the sweep found it; no wait
    round_trips.count = 0
    compact.group_add("g", "proc!a")
    assert round_trips.count == 1
    for n in range(20):
        compact.group_add("g", f"proc!{n}")
        compact.group_add("g", f"reply?{n}")
    round_trips.count = 0
    compact.send_group("g", {"n": 1})
    assert round_trips.count == 2  # group read + one pipeline on the one server
    round_trips.count = 0
    assert compact.receive(["proc!"]) == ("proc!a", {"n": 1})  # members in add order
    assert round_trips.count == 1
    round_trips.count = 0
    assert compact.receive(["proc!"]) == ("proc!0", {"n": 1})  # fanned out in memory
    assert round_trips.count == 0


def test_woken_receive_needs_no_second_trip(compact, redis_server, round_trips):
    sender = RedisChannelLayer(hosts=[redis_server.url], layout="compact", expiry=30)
    sender.send("warm!", {})  # sender connected and its script loaded beforehand
    compact.receive(["warm!"])
    watcher = redis_server.client()
    watcher.ping()
    got = []
    receiver = threading.Thread(target=lambda: got.append(compact.receive(["wake!"], block=True)))
    try:
        receiver.start()
        while b"blpop" not in watcher.execute_command("CLIENT", "LIST"):
            time.sleep(0.01)
        round_trips.commands.clear()
        sender.send("wake!a", {"woke": True})
        receiver.join(10)
    finally:
        watcher.close()
        sender.close()
    assert got == [("wake!a", {"woke": True})]
    # after the wait: the sender's one EVALSHA, nothing from the woken receiver
    assert len(round_trips.commands) == 1 and b"EVALSHA" in _sent_one(round_trips.commands[0])


def _sent_one(command):
    return b" ".join(_parts(command))


def test_round_trips_two_shards(redis_shards, round_trips):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards], expiry=5, layout="compact")
    layer.flush()
    try:
        for n in range(40):
            layer.group_add("g", f"member{n}")
            layer.group_add("g", f"reply?{n}")
        layer.send_group("g", {})
        layer.receive(["nothing"])
        round_trips.count = 0
        layer.send_group("g", {"n": 1})
        assert round_trips.count == 3  # group read + one pipeline per shard
        round_trips.count = 0
        assert layer.receive(["nothing"]) == (None, None)
        assert round_trips.count == 2  # one pop per shard
    finally:
        layer.flush()
        layer.close()


# -- TTLs set again once per REFRESH_SECONDS per sender ----------------------------------------------


def _ttls(raw):
    return {key: raw.pttl(key) for key in raw.keys("*")}


def test_an_accepted_send_is_three_commands_between_ttl_refreshes(compact, raw):
    compact.send("proc!a", {"n": 0})  # creates the three keys: each gets its TTL
    assert all(ttl > 0 for ttl in _ttls(raw).values()) and len(_ttls(raw)) == 3
    raw.config_resetstat()
    for n in range(1, 21):
        compact.send("proc!a", {"n": n})
    assert _calls(raw, "rpush", "hincrby", "pexpire", "expire") == [20, 40, 0, 0]


def test_ttls_are_set_again_after_the_refresh_interval(compact, raw, monkeypatch):
    monkeypatch.setattr(compact_layout, "REFRESH_SECONDS", 0.05)
    compact.send("proc!a", {"n": 0})
    raw.config_resetstat()
    time.sleep(0.06)
    compact.send("proc!a", {"n": 1})
    compact.send("proc!a", {"n": 2})
    # the first send after the interval sets the queue's and both counters' TTLs; the next none
    assert _calls(raw, "pexpire", "expire") == [1, 2]


def test_keys_created_again_get_their_ttls_at_once(make_compact, raw):
    layer = make_compact(expiry=30, capacity=1)
    layer.send("proc!a", {"n": 0})
    for created_by in ("accepted", "refused"):
        # gone behind the sender's back (another process's flush, or expired):
        # the sender set the TTLs a moment ago, yet the new keys get theirs
        if created_by == "accepted":
            raw.delete(*raw.keys("*"))
            layer.send("proc!a", {"n": 1})
        else:
            raw.delete(*raw.keys("asgi-meta:*"))
            with pytest.raises(layer.ChannelFull):
                layer.send("proc!a", {"n": 2})
        ttls = _ttls(raw)
        assert len(ttls) == 3 and all(ttl > 0 for ttl in ttls.values()), (created_by, ttls)


def test_group_entries_follow_the_same_ttl_rules(compact, raw):
    for n in range(3):
        compact.group_add("room", f"proc{n}!a")
    compact.send_group("room", {"n": 0})
    ttls = _ttls(raw)
    assert all(ttl > 0 for key, ttl in ttls.items() if b":group" not in key)
    raw.config_resetstat()
    compact.send_group("room", {"n": 1})
    assert _calls(raw, "pexpire", "expire") == [0, 0]
    raw.delete(*(key for key in raw.keys("*") if b":group" not in key))
    compact.send_group("room", {"n": 2})
    assert all(ttl > 0 for ttl in _ttls(raw).values())


def test_a_failed_send_makes_the_next_one_set_the_ttls(compact, raw):
    layout = compact.layout
    compact.send("proc!a", {"n": 0})
    [call] = layout.send_calls([("proc!", [b"x"])])
    assert call.args[3] == b"0"
    layout.send_failed([call])  # the core says so when a send raised: it may not have run
    [call] = layout.send_calls([("proc!", [b"x"])])
    assert call.args[3] == b"1"
    # and the core does say so
    nobody = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}"], layout="compact",
                               connection_kwargs={"socket_connect_timeout": 0.5})
    try:
        nobody.send("proc!a", {"n": 0})  # sets the TTLs... if it could
    except LayerConnectionError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a send to a port nobody listens on succeeded")
    [call] = nobody.layout.send_calls([("proc!", [b"x"])])
    assert call.args[3] == b"1"
    nobody.close()


# -- script cost -----------------------------------------------------------------------------------


def test_compact_runs_fewer_commands_per_delivered_message(make_layer, compact, raw):
    """Commands Redis runs per message sent and received, counted (not timed):
    the compact layout does well under the classic one's."""
    classic = make_layer(expiry=30)

    def commands_per_message(layer, block):
        raw.config_resetstat()
        for n in range(50):
            layer.send("proc!a", {"n": n})
            assert layer.receive(["proc!"], block=block)[0] == "proc!a"
        stats = raw.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if "config" not in k) / 50

    for block in (False, True):
        assert commands_per_message(compact, block) <= 0.7 * commands_per_message(classic, block)


def test_layout_scripts_on_their_own(raw):
    # the layout alone, without a layer: the calls it builds run as they are
    layout = get_layout("compact")(LayoutSettings("t:", "t-meta:", 30, 60, lambda queue: 5))
    replies = scripts.run(raw, layout.send_calls([("a!", [b"x"]), ("b?c", [b"y"])]))
    assert layout.read_send(replies) == 0
    popped = layout.read_pop(scripts.run(raw, [layout.pop_call([layout.queue_key("b?c")])])[0])
    assert popped.body == b"y" and layout.channel_of(popped.queue_key) == "b?c"
    raw.delete(*raw.keys("t*"))


@pytest.mark.parametrize("lmpop", [True, False])
def test_pop_over_several_queues_skips_expired_entries(compact, raw, lmpop):
    compact.layout._plain_pop.lmpop = lmpop  # False: as on Redis < 7, the Lua pop
    now = int(time.time() * 1000)
    raw.rpush("asgi:c1{#0}first", b"1%013dm" % (now - 1) + compact.serializer.encode({"n": "dead"}))
    compact.send("second", {"n": "live"})
    assert compact.receive(["first", "second"]) == ("second", {"n": "live"})
    assert compact.receive(["first", "second"]) == (None, None)
    assert raw.llen("asgi:c1{#0}first") == 0  # the dead entry was dropped, not put back


def test_pop_learns_that_lmpop_is_missing(compact, raw):
    pop = compact.layout._plain_pop
    error = __import__("redis").ResponseError("ERR unknown command 'LMPOP', with args beginning with: ")
    assert pop._learn(error) is compact_layout._USE_SCRIPT
    assert not pop.lmpop
    assert pop._command([b"a", b"b"]) is None  # the script from now on
    # another thread's LMPOP, sent before the first refusal was learnt, is refused
    # too: the script answers it as well (it used to raise in that thread)
    assert pop._learn(error) is compact_layout._USE_SCRIPT
    other = __import__("redis").ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    with pytest.raises(type(other)):
        pop._learn(other)  # any other error is real


def test_fan_out_through_receive_async(compact):
    import asyncio

    for n in range(3):
        compact.group_add("g", f"proc!{n}")

    async def scenario():
        try:
            waiting = asyncio.ensure_future(compact.receive_async(["proc!"]))
            await asyncio.sleep(0.2)  # blocked in its BLPOP by now
            compact.send_group("g", {"hi": 1})
            return [await waiting] + [await compact.receive_async(["proc!"]) for _ in range(2)]
        finally:
            await compact.close_async()

    assert asyncio.run(scenario()) == [(f"proc!{n}", {"hi": 1}) for n in range(3)]


def test_many_dead_entries_cost_two_round_trips(compact, raw, round_trips):
    from asgi_redis.layouts.compact import POP

    POP(raw, [b"warm"], [b"0"])  # loaded on the server beforehand
    compact.send("warm", {})
    compact.receive(["warm"])
    now = int(time.time() * 1000)
    raw.rpush("asgi:c1{#0}stale", *[b"1%013dm" % (now - 1) + b"x" for _ in range(50)])
    compact.send("stale", {"n": "live"})
    round_trips.count = 0
    assert compact.receive(["stale"]) == ("stale", {"n": "live"})
    assert round_trips.count == 2  # LPOP met a dead entry; the Lua pop dropped the 49 others


def test_large_group_sends_are_cut_into_bounded_calls(compact):
    from asgi_redis.layouts.compact import CALL_ENTRIES

    runs = [(f"reply?{n}", [b"x"]) for n in range(2 * CALL_ENTRIES + 5)]
    calls = compact.layout.send_calls(runs)
    assert [len(call.keys) // 3 for call in calls] == [CALL_ENTRIES, CALL_ENTRIES, 5]


def test_buffered_members_expire_with_their_entry(make_compact):
    layer = make_compact(expiry=1)
    for n in range(3):
        layer.group_add("g", f"proc!{n}")
    layer.send_group("g", {"hi": 1})
    assert layer.receive(["proc!"]) == ("proc!0", {"hi": 1})
    assert layer.layout.pending_count() == 2
    time.sleep(1.05)  # past the entry's deadline: the held members are never delivered
    assert layer.receive(["proc!"]) == (None, None)
    assert layer.layout.pending_count() == 0
