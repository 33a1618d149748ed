"""The base class that runs asgiref 1.1.2's conformance suite against one
layer configuration.

Apart from helpers.py because the ``modern`` tox env (asgiref 3, which has no
conformance suite) imports helpers.py but never this.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable

import pytest
from asgiref import conformance

from asgi_redis import RedisChannelLayer

from .helpers import LayerBuilder


def _class_fixture(function: Callable[..., Any]) -> Any:
    """A class-scoped autouse fixture that reads its class from ``request.cls``.

    pytest 9 wants class-scoped fixtures to be classmethods, but Python 3.9's
    classmethod objects have no ``__name__``, which pytest 8 (the last for 3.9)
    reads: there it stays a plain method."""
    if sys.version_info < (3, 10):
        return pytest.fixture(scope="class", autouse=True)(function)
    return pytest.fixture(scope="class", autouse=True)(classmethod(function))


class LayerConformance(conformance.ConformanceTestCase):
    """asgiref 1.1.2's conformance suite against one layer configuration.

    A configuration is a subclass: ``layer_class`` and a static ``layer_config``
    returning the layer's keywords. ``layer_config``'s parameters name the
    server fixtures it needs, as a pytest fixture's parameters do; the layer is
    built once per class (expiry 1 s, group expiry 2 s, capacity
    ``capacity_limit`` or 100 where that is None) and flushed before every
    test by the suite itself.
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

    @_class_fixture
    def _class_layer(_, request):
        cls = request.cls
        servers = {name: request.getfixturevalue(name) for name in inspect.signature(cls.layer_config).parameters}
        builder = LayerBuilder(cls.layer_class, expiry=1, group_expiry=2, capacity=cls.capacity_limit or 100)
        cls.channel_layer = builder(**cls.layer_config(**servers))
        yield
        cls.channel_layer = None
        builder.close()


def on_layout(layer_config: Callable[..., dict], layout: str) -> Any:
    """``layer_config`` of another configuration with ``layout=`` added (also to a
    ``local_layer_config``), as the static ``layer_config`` of a subclass; it keeps
    the parameters (the fixtures) of the one it wraps."""

    @functools.wraps(layer_config)
    def config(**servers: Any) -> dict:
        made = {**layer_config(**servers), "layout": layout}
        if isinstance(made.get("local_layer_config"), dict):
            made["local_layer_config"] = {**made["local_layer_config"], "layout": layout}
        return made

    return staticmethod(config)
