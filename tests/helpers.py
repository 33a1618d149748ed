"""Shared pieces of the test modules: the layer builder every ``make_layer``-
style fixture uses, the one-round-trip check, and running the command line.

Test modules import shared pieces from here, layer_conformance.py, servers.py
and topology.py, never from each other or from conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


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


def check_send_and_receive_cost_one_round_trip_each(layer: Any, round_trips: Any, channel: str) -> None:
    """On a warm layer: sending ``{"a": 1}`` to ``channel`` is one round trip and
    receiving it back is one more. Leaves ``round_trips.count`` at zero."""
    round_trips.count = 0
    layer.send(channel, {"a": 1})
    assert round_trips.count == 1
    round_trips.count = 0
    assert layer.receive([channel]) == (channel, {"a": 1})
    assert round_trips.count == 1
    round_trips.count = 0


def cli_environment() -> Dict[str, str]:
    """This environment with the repository first on PYTHONPATH, so a
    ``python -m asgi_redis`` subprocess runs the code under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args: str, stdin: str = "", cwd: Any = None, timeout: float = 120,
            module: str = "asgi_redis") -> subprocess.CompletedProcess:
    """``python -m module args...`` as a user runs it, from the repository unless ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
        cwd=cwd or ROOT, env=cli_environment(), timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, *words: str) -> None:
    """The command exited with ``status`` and said one ``error:`` line naming every word."""
    assert result.returncode == status, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
