"""Shared pieces of the test modules: the layer builder every ``make_layer``-
style fixture uses, and the base class that runs asgiref 1.1.2's conformance
suite against one layer configuration.

Test modules import from here (and from servers.py / topology.py), never from
each other or from conftest.py.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, List

import pytest
from asgiref import conformance

from asgi_redis import RedisChannelLayer


class LayerBuilder:
    """Builds layers for one test and cleans up after it.

    ``factory(**{**defaults, **config})`` makes each layer (a layer class, or a
    function that also adjusts the new layer). Each layer is flushed before use
    unless ``flush_first`` is false (layers meant not to connect), and
    ``close()`` flushes (if ``flush_after``) and closes every one.
    """

    def __init__(self, factory: Callable[..., Any], *, flush_first: bool = True, flush_after: bool = True,
                 **defaults: Any):
        self.factory = factory
        self.flush_first = flush_first
        self.flush_after = flush_after
        self.defaults = defaults
        self.made: List[Any] = []

    def __call__(self, **config: Any) -> Any:
        layer = self.factory(**{**self.defaults, **config})
        self.made.append(layer)  # before the flush, so a layer whose flush failed is still closed
        if self.flush_first and _can_flush(layer):
            layer.flush()
        return layer

    def close(self) -> None:
        for layer in self.made:
            if self.flush_after and _can_flush(layer):
                try:
                    layer.flush()
                except Exception:  # a test may have stopped the server, or built a layer that cannot connect
                    pass
            layer.close()
        self.made.clear()


def _can_flush(layer: Any) -> bool:
    # a local-mode layer over a local layer without "flush" has no flush; clients without
    # an extensions list (the modern one) always flush
    extensions = getattr(layer, "extensions", None)
    return extensions is None or "flush" in extensions


def built_layers(factory: Callable[..., Any], **options: Any) -> Iterator[LayerBuilder]:
    """Body of a ``make_layer``-style fixture (``yield from built_layers(...)``):
    yields a LayerBuilder and cleans up its layers after the test."""
    builder = LayerBuilder(factory, **options)
    try:
        yield builder
    finally:
        builder.close()


class LayerConformance(conformance.ConformanceTestCase):
    """asgiref 1.1.2's conformance suite against one layer configuration.

    A configuration is a subclass: ``layer_class`` and a static ``layer_config``
    returning the layer's keywords. ``layer_config``'s parameters name the
    server fixtures it needs, as a pytest fixture's parameters do; the layer is
    built once per class (expiry 1 s, group expiry 2 s, capacity
    ``capacity_limit``) and flushed before every test by the suite itself.
    Every subclass is collected; this base is not.
    """

    __test__ = False
    layer_class: Callable[..., Any] = RedisChannelLayer
    expiry_delay = 1.1
    capacity_limit = 5
    receive_tries = 1

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    @staticmethod
    def layer_config() -> dict:
        raise NotImplementedError("a conformance configuration defines layer_config")

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _class_layer(cls, request):
        servers = {name: request.getfixturevalue(name) for name in inspect.signature(cls.layer_config).parameters}
        builder = LayerBuilder(cls.layer_class, expiry=1, group_expiry=2, capacity=cls.capacity_limit or 100)
        cls.channel_layer = builder(**cls.layer_config(**servers))
        yield
        cls.channel_layer = None
        builder.close()
