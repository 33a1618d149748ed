import pytest
import redis

from asgi_redis import RedisChannelLayer

from .helpers import built_layers
from .servers import RedisProcess, serving


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the long load tests marked 'soak' (tests/test_soak.py)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long load test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server():
    yield from serving()


@pytest.fixture(scope="session")
def redis_shards():
    servers = [RedisProcess(), RedisProcess()]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def raw(redis_server):
    """A plain redis-py client on the test server, for inspecting the layout."""
    with redis_server.client() as client:
        yield client


@pytest.fixture
def make_layer(redis_server):
    """Build layers on the test server; every one is flushed before and after."""
    yield from built_layers(RedisChannelLayer, hosts=[redis_server.url], expiry=1, group_expiry=2)


@pytest.fixture
def layer(make_layer):
    return make_layer()


class RoundTrips:
    """Counts round trips: one packed write to a Redis socket is one trip."""

    def __init__(self):
        self.count = 0
        self.commands = []


@pytest.fixture
def round_trips(monkeypatch):
    counter = RoundTrips()
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        counter.count += 1
        counter.commands.append(command)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return counter
