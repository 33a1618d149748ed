"""asgiref 1.1.2's ASGI conformance suite, run against every configuration.

Each configuration is a few lines: a subclass naming the layer keywords.
Other modes (Sentinel, local) subclass ``LayerConformance`` in their own
test modules.
"""

import re

import pytest
from asgiref import conformance

from asgi_redis import RedisChannelLayer

from .servers import RedisProcess

_servers = {}


def _server(name):
    if name not in _servers:
        _servers[name] = RedisProcess()
    return _servers[name]


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    for server in _servers.values():
        server.close()
    _servers.clear()


class LayerConformance(conformance.ConformanceTestCase):
    """Subclass with ``layer_class`` and ``layer_config()``; the suite does the rest."""

    layer_class = RedisChannelLayer
    expiry_delay = 1.1
    capacity_limit = 5
    receive_tries = 1

    @classmethod
    def layer_config(cls):
        return {"hosts": [_server("a").url]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls is LayerConformance:
            return
        config = {"expiry": 1, "group_expiry": 2, "capacity": cls.capacity_limit or 100}
        config.update(cls.layer_config())
        cls.channel_layer = cls.layer_class(**config)

    @classmethod
    def tearDownClass(cls):
        if cls.channel_layer is not None:
            cls.channel_layer.flush()
            cls.channel_layer.close()
        super().tearDownClass()


# The base class must not run on its own
LayerConformance.__test__ = False


class TestPlain(LayerConformance):
    __test__ = True


class TestEncrypted(LayerConformance):
    __test__ = True

    @classmethod
    def layer_config(cls):
        return {"hosts": [_server("a").url], "symmetric_encryption_keys": ["new key", "old key"]}


class TestSharded(LayerConformance):
    """Normal channels spread over the shards, so their capacity counts per
    shard (as in 1.4.3): the suite's single capacity number cannot fit both
    normal and ``!`` channels; test_core checks sharded capacity instead."""

    __test__ = True
    capacity_limit = None

    @classmethod
    def layer_config(cls):
        return {"hosts": [_server("a").url, ("127.0.0.1", _server("b").port)]}


class TestCapacityMap(LayerConformance):
    """The default capacity is large; the map brings every test channel down to 5."""

    __test__ = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.channel_layer.capacity = 100

    @classmethod
    def layer_config(cls):
        return {
            "hosts": [_server("a").url],
            "capacity": 100,
            "channel_capacity": {re.compile(r"^cap_"): 5, "capp!": 5, "*": 5},
        }


# -- the compact layout (layout="compact"): the same suite, every configuration --


class TestCompactPlain(TestPlain):
    @classmethod
    def layer_config(cls):
        return {**super().layer_config(), "layout": "compact"}


class TestCompactEncrypted(TestEncrypted):
    @classmethod
    def layer_config(cls):
        return {**super().layer_config(), "layout": "compact"}


class TestCompactSharded(TestSharded):
    @classmethod
    def layer_config(cls):
        return {**super().layer_config(), "layout": "compact"}


class TestCompactCapacityMap(TestCapacityMap):
    @classmethod
    def layer_config(cls):
        return {**super().layer_config(), "layout": "compact"}
