"""The hot path's connections (asgi_redis/checkout.py): sends and pops borrow an
idle connection from the pool's own list, the pool stays the one owner."""

import threading

import pytest

from asgi_redis import RedisChannelLayer, checkout

from .helpers import built_layers
from .servers import serving


@pytest.fixture
def own_server():
    yield from serving()


@pytest.fixture
def make_bounded(redis_server):
    yield from built_layers(RedisChannelLayer, hosts=[redis_server.url], expiry=30,
                            connection_kwargs={"max_connections": 2})


@pytest.fixture
def make_own(own_server):
    yield from built_layers(RedisChannelLayer, hosts=[own_server.url], expiry=30, layout="compact")


@pytest.fixture(params=["classic", "compact"])
def make(redis_server, request):
    yield from built_layers(RedisChannelLayer, hosts=[redis_server.url], expiry=30, layout=request.param)


class _Checkouts:
    """Counts redis-py's own checkouts on one pool (the behaviour stays the pool's)."""

    def __init__(self, pool):
        self.count = 0
        self._original = pool.get_connection

        def counted(*args, **kwargs):
            self.count += 1
            return self._original(*args, **kwargs)

        pool.get_connection = counted


def test_sends_and_pops_reuse_one_idle_connection(make):
    layer = make()
    layer.send("warm?x", {"n": 0})
    assert layer.receive(["warm?x"])[0] == "warm?x"
    pool = layer.shards.client(0).connection_pool
    checkouts = _Checkouts(pool)
    for n in range(50):
        layer.send("proc!a", {"n": n})
        assert layer.receive(["proc!"]) == ("proc!a", {"n": n})
    assert checkouts.count == 0  # every call borrowed the idle one
    assert len(pool._available_connections) == 1


def test_a_bounded_pool_is_shared_with_redis_pys_own_callers(make_bounded):
    # sends (borrowed) and send_group / statistics (redis-py's checkout) from two
    # threads on a pool of two: one set of connections, never a third
    layer = make_bounded()
    layer.group_add("room", "proc!a")
    errors = []

    def work(name):
        try:
            for n in range(100):
                layer.send(f"{name}?x", {"n": n})
                layer.send_group("room", {"n": n})
                layer.channel_statistics(f"{name}?x")
                assert layer.receive([f"{name}?x"])[0] == f"{name}?x"
        except Exception as error:  # pragma: no cover - the failure is reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool = layer.shards.client(0).connection_pool
    assert errors == [] and pool._created_connections <= 2


def test_a_connection_the_server_closed_is_replaced_before_the_command(make_own, own_server):
    layer = make_own()
    layer.send("proc!a", {"n": 0})
    [idle] = layer.shards.client(0).connection_pool._available_connections
    with own_server.client() as admin:
        killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    # the send must not be lost to the dead socket (nor, being a send, retried blindly)
    layer.send("proc!a", {"n": 1})
    assert [layer.receive(["proc!"])[1] for _ in range(3)] == [{"n": 0}, {"n": 1}, None]
    assert layer.shards.client(0).connection_pool._available_connections == [idle]  # reconnected in place


def test_other_pools_take_redis_pys_checkout(redis_server):
    import redis

    pool = redis.BlockingConnectionPool.from_url(redis_server.url, max_connections=2)
    client = redis.Redis(connection_pool=pool)
    try:
        assert checkout.execute(client, "PING") is True
        connection, from_idle = checkout.take(pool)
        assert not from_idle
        checkout.give_back(pool, connection, from_idle)
    finally:
        pool.disconnect()
