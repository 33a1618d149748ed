"""The compact layout as the cluster layer uses it: one slot per call, normal channels in buckets.

Every key name, script and entry format is the compact layout's
(``asgi_redis/layouts/compact.py``, docs/compact-layout.md). Two things are
the cluster's own:

* ``split_by_slot``: a pop or a BLPOP covers the queues of one hash slot only
  (a cluster refuses keys of several slots in one script or BLPOP).
* Buckets for normal channels. A normal channel's queue is
  ``P c1{<bucket tag>}<name>``; the bucket tags are a fixed list of
  ``buckets`` tags (the same in every process of a site: it is a setting),
  hashing to evenly spaced slots, so with the usual even split of slots every
  master owns some. Of each master's buckets the first in that list is its
  *primary* bucket, and a normal channel lives in the primary bucket its
  name hashes to: every master carries a share of the normal channels, a
  channel keeps one queue (its capacity and order hold as on one server), and
  a receive on any number of normal channels needs at most one pop and one
  BLPOP per master. Every process with the same slot map agrees where a
  channel lives. The other buckets only matter after a resharding changed
  the primary buckets (a channel then moves to another bucket, and messages
  sent just before sit in the old one): the layer sweeps every bucket of the
  channels it receives on now and then (``all_bucket_keys``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

from ..layouts.base import LayoutSettings, Operation
from ..layouts.compact import CompactLayout
from ..layouts.slots import SLOT_COUNT, crc16, slot_tag

DEFAULT_BUCKETS = 16


def bucket_tags(count: int) -> List[str]:
    """``count`` tags hashing to the middles of ``count`` equal slot ranges."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= SLOT_COUNT:
        raise ValueError(f"buckets must be an int from 1 to {SLOT_COUNT}, not {count!r}")
    return [slot_tag((2 * i + 1) * SLOT_COUNT // (2 * count)).decode("ascii") for i in range(count)]


def _is_normal(name: str) -> bool:
    return "?" not in name and "!" not in name


class ClusterLayout(CompactLayout):
    """CompactLayout with one slot per pop/BLPOP and normal channels spread over buckets.

    ``primary_tags`` is told by the layer: a callable returning the primary
    bucket tags of the current slot map (one per master owning a bucket).
    """

    split_by_slot = True

    def __init__(self, settings: LayoutSettings, buckets: int = DEFAULT_BUCKETS,
                 primary_tags: Optional[Callable[[], List[str]]] = None) -> None:
        super().__init__(settings)
        self.bucket_tags = bucket_tags(buckets)
        self.primary_tags: Callable[[], List[str]] = primary_tags or (lambda: self.bucket_tags)
        self._bucket = threading.local()  # a bucket tag imposed while building statistics calls

    # -- key names ---------------------------------------------------------------------

    def bucket_of(self, name: str) -> str:
        """The bucket tag of normal channel ``name``: the primary bucket its name hashes to."""
        primaries = self.primary_tags()
        return primaries[crc16(name.encode("utf8")) % len(primaries)]

    def queue_key(self, name: str, tag: Optional[str] = None) -> bytes:
        if tag is None and _is_normal(name):
            tag = getattr(self._bucket, "tag", None) or self.bucket_of(name)
        return super().queue_key(name, tag)

    def keys_generation(self) -> Any:
        # the primary bucket list, one object per slot map: a resharding that moves
        # a normal channel to another bucket makes a sender name its new queue
        return self.primary_tags()

    def all_bucket_keys(self, name: str) -> List[bytes]:
        """Every bucket's queue of a normal channel (where it lives now or lived before)."""
        return [self.queue_key(name, tag) for tag in self.bucket_tags]

    # -- statistics ----------------------------------------------------------------------

    def channel_stats_ops(self, queue: str) -> List[Operation]:
        if not _is_normal(queue):
            return super().channel_stats_ops(queue)
        operations: List[Operation] = []
        for tag in self.bucket_tags:  # counters sit beside each bucket's queue
            self._bucket.tag = tag
            try:
                operations += super().channel_stats_ops(queue)
            finally:
                self._bucket.tag = None
        return operations

    def read_channel_stats(self, replies: List[Any]) -> Dict[str, int]:
        totals: Dict[str, int] = {}
        for reply in replies:
            for name, value in super().read_channel_stats([reply]).items():
                value = int(value or 0)
                # the oldest message of any bucket is the channel's oldest; the rest add up
                totals[name] = max(totals.get(name, 0), value) if name == "messages_max_age" \
                    else totals.get(name, 0) + value
        return totals


__all__ = ["ClusterLayout", "DEFAULT_BUCKETS", "bucket_tags"]
