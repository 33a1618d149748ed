"""What the receive engine needs from a layer: the declared interface it talks to.

The engine never reaches into a layer's private attributes; a layer hands it
an object with these members (``core.py`` builds one, :class:`ReceivePort`).
"""

from __future__ import annotations

from typing import Any, ContextManager, List, Optional, Protocol, Tuple

from ..connections import ShardSet
from ..errors import LayerConnectionError
from ..layouts.base import Layout, Popped
from .quirks import ServerQuirks

Found = Tuple[str, dict]
Received = Tuple[Optional[str], Optional[dict]]
NOTHING: Received = (None, None)
Target = Tuple[ShardSet, int, List[bytes]]  # shard set, shard index, queue keys (one pop / BLPOP)


class LayerPort(Protocol):
    """The layer as the receive engine sees it."""

    layout: Layout  # key layout: pops, the meaning of a BLPOP reply, push-backs
    quirks: ServerQuirks  # what the servers turned out not to support

    @property
    def blpop_timeout(self) -> float:
        """Seconds a blocking receive waits before ``(None, None)``."""

    @property
    def shard_poll_interval(self) -> float:
        """Per-server BLPOP slice when servers cannot cancel a wait (Redis < 5)."""

    def guard(self, shards: ShardSet, index: int, action: str) -> ContextManager[Any]:
        """Run a call on one server: connection errors become LayerConnectionError naming it."""

    def decode(self, popped: Popped) -> Optional[Found]:
        """``(channel, message)`` of a popped message, or None when it cannot be decoded (dropped)."""

    def wait_goes_on(self, error: LayerConnectionError) -> Optional[float]:
        """After a blocking receive's wait failed with ``error``: the seconds to pause
        before waiting again (the layer expects the server back soon, as a cluster's
        promoted replica), or None for the error to end the receive."""
