"""asgiref 1.1.2's ASGI conformance suite, run against every configuration.

Each configuration is a few lines: a subclass of ``layer_conformance.LayerConformance``
naming the layer keywords and the server fixtures they need. Other modes
(Sentinel, local) subclass it in their own test modules.
"""

import re

import pytest

from .layer_conformance import LayerConformance, on_layout
from .servers import serving


@pytest.fixture(scope="module")
def conformance_server():
    yield from serving()


@pytest.fixture(scope="module")
def conformance_shard():
    """A second server, for the sharded configuration."""
    yield from serving()


class TestPlain(LayerConformance):
    @staticmethod
    def layer_config(conformance_server):
        return {"hosts": [conformance_server.url]}


class TestEncrypted(LayerConformance):
    @staticmethod
    def layer_config(conformance_server):
        return {"hosts": [conformance_server.url], "symmetric_encryption_keys": ["new key", "old key"]}


class TestSharded(LayerConformance):
    """Normal channels spread over the shards, so their capacity counts per
    shard (as in 1.4.3): the suite's single capacity number cannot fit both
    normal and ``!`` channels; test_core checks sharded capacity instead."""

    capacity_limit = None

    @staticmethod
    def layer_config(conformance_server, conformance_shard):
        return {"hosts": [conformance_server.url, ("127.0.0.1", conformance_shard.port)]}


class TestCapacityMap(LayerConformance):
    """The default capacity is large; the map brings every test channel down to 5."""

    @staticmethod
    def layer_config(conformance_server):
        return {
            "hosts": [conformance_server.url],
            "capacity": 100,
            "channel_capacity": {re.compile(r"^cap_"): 5, "capp!": 5, "*": 5},
        }


# -- the compact layout (layout="compact"): the same suite, every configuration --


class TestCompactPlain(TestPlain):
    layer_config = on_layout(TestPlain.layer_config, "compact")


class TestCompactEncrypted(TestEncrypted):
    layer_config = on_layout(TestEncrypted.layer_config, "compact")


class TestCompactSharded(TestSharded):
    layer_config = on_layout(TestSharded.layer_config, "compact")


class TestCompactCapacityMap(TestCapacityMap):
    layer_config = on_layout(TestCapacityMap.layer_config, "compact")
