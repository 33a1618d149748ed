"""Key layouts: how the layer's data sits in Redis (see base.py for the contract).

``LAYOUTS`` maps each ``layout=`` value to the ``module:Class`` implementing
it, imported only when chosen (so no layout module is imported by another).
"""

from __future__ import annotations

import importlib
from typing import Dict, Type

from .base import Layout

LAYOUTS: Dict[str, str] = {
    "classic": "asgi_redis.layouts.classic:ClassicLayout",  # asgi_redis 1.4.3's, the default
    "compact": "asgi_redis.layouts.compact:CompactLayout",  # cluster-safe, message in its entry
}


def get_layout(name: str) -> Type[Layout]:
    """The layout class registered as ``name``; ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, not {name!r}")
    module_name, _, class_name = LAYOUTS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
