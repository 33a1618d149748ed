"""The key layout contract: how the layer's data sits in Redis.

A *layout* decides every key name, every script and which names share a
server; ``core.py``, the receive engine (``asgi_redis/receive/``),
``sentinel.py`` and ``local.py`` never format a key nor name a script. They
ask the layout for *operations* and run them:

* :class:`Call` - one Lua script (``script``, ``keys``, ``args``), run by
  EVALSHA with NOSCRIPT reload (:class:`asgi_redis.scripts.LuaScript`);
* :class:`Command` - one plain Redis command (``("ZREM", key, member)``).

A method returning a *list* of operations for one server lets a layout split
work (e.g. one call per hash slot on a cluster): the core sends one
operation directly and several in one pipeline, so either costs one round
trip, and hands the list of replies back to the layout's ``read_*`` method.

Contract summary (every method is required unless it has a body here):

Key names
  ``queue_key(name, tag=None) -> bytes``  queue of a non-local name; ``tag``
      is a bucket/slot tag the router may choose for normal channels
  ``receive_keys(name) -> list[bytes]``   every queue key where messages for a
      name may wait on one server (default: its one ``queue_key``; a layout
      spreading normal channels over bucket tags lists one key per bucket)
  ``channel_of(queue_key) -> str``        the reverse (queue key -> name)
  ``group_key(group) -> str``            the key of a group (the CLI and bench read it)
  ``new_channel_probe(name) -> Command``  reply truthy when the name is taken
  ``scan_patterns() -> list[str]``        glob patterns of every key it owns
Routing
  ``shard_of(name, shard_count) -> int``  server of a ``?``/``!`` queue
      (given its non-local name) or of a group
  ``group_keys(queue_keys) -> list[list[bytes]]``  queue keys split into
      the sets one pop / one BLPOP may cover together (same slot)
Scripts
  ``send_calls(runs) -> list[Call]``  runs of (queue name, [bodies]) bound for
      one server; ``read_send(replies) -> int`` messages refused as full
  ``pop_call(queue_keys) -> Call``    non-blocking pop, tries keys in order;
      ``read_pop(reply) -> Popped | None`` (the Call's script may be any object
      run as ``script(client, keys, args)`` / ``await script.call_async(...)``,
      e.g. compact's plain LPOP / LMPOP)
  ``group_add_ops / group_discard_ops / group_members_ops`` and
      ``read_group_members``; ``channel_stats_ops`` / ``read_channel_stats``;
      ``global_stats_ops`` / ``read_global_stats`` (``global_stats_pattern``
      when the counters are spread over keys found by SCAN)
The blocking wait
  ``after_wait(queue_key, element) -> Popped | None | Call``  the meaning of
      a BLPOP reply: a body (compact: inline), nothing (expired: wait on),
      or a follow-up call on the same server (classic: take_body) whose reply
      goes to ``after_follow_up(queue_key, reply) -> Popped | None``
  ``push_back(queue_key, element) -> list[Command]``  put an element popped
      by a cancelled wait back at the head of its queue (one pipeline)
  ``take_pending(queue_keys) -> Popped | None``  a message the layout holds
      in memory (fan-out of one entry to several channels); default none
Versioning
  ``name`` and ``version``: a layout that can be told apart from another
  checks its marker inside its own scripts (no extra round trip) and refuses
  keys of another layout with :class:`LayoutMismatch`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import ChannelLayerError
from ..scripts import Call, Command, Operation

__all__ = [
    "Call", "Command", "Operation", "Popped", "GroupEntry", "LayoutSettings", "LayoutMismatch", "Layout",
]


class Popped(NamedTuple):
    """A message taken out of Redis, not yet decoded: its queue key and its body.

    ``channel`` is set when the layout knows the receiving channel itself (an
    entry fanned out to several ``foo!*`` members); else the body names it
    (``__asgi_channel__``) or the queue key does."""

    queue_key: bytes
    body: bytes
    channel: Optional[str] = None


class GroupEntry(NamedTuple):
    """One send_group entry for the queue of a process (``foo!``): one body for
    all of ``channels`` (``foo!a``, ``foo!b``, ...), given to ``send_calls``
    only by a layout with ``fans_out`` set."""

    body: bytes
    channels: List[str]


class LayoutSettings(NamedTuple):
    """What a layout needs from the layer's configuration."""

    prefix: str
    stats_prefix: str
    expiry: int
    group_expiry: int
    capacity_for: Callable[[str], int]  # queue name -> its capacity


class LayoutMismatch(ChannelLayerError):
    """Redis holds keys written by another layout under this layer's prefix."""


class Layout:
    """Base class of every key layout; one instance per layer, built from its settings."""

    name: str = ""
    version: int = 0
    # True: send_group hands this layout one GroupEntry per ``foo!`` queue (a plain
    # body, the members named beside it) instead of one body naming each member
    fans_out: bool = False

    def __init__(self, settings: LayoutSettings) -> None:
        self.settings = settings

    # -- key names -----------------------------------------------------------------

    def queue_key(self, name: str, tag: Optional[str] = None) -> bytes:
        raise NotImplementedError

    def receive_keys(self, name: str) -> List[bytes]:
        """Every queue key a receive on ``name`` looks at on one server."""
        return [self.queue_key(name)]

    def channel_of(self, queue_key: bytes) -> str:
        raise NotImplementedError

    def group_key(self, group: str) -> str:
        raise NotImplementedError

    def new_channel_probe(self, name: str) -> Command:
        raise NotImplementedError

    def scan_patterns(self) -> List[str]:
        raise NotImplementedError

    # -- routing ---------------------------------------------------------------------

    def shard_of(self, name: str, shard_count: int) -> int:
        raise NotImplementedError

    def group_keys(self, queue_keys: List[bytes]) -> List[List[bytes]]:
        """Queue keys in sets that one pop or one BLPOP may cover (default: all together)."""
        return [queue_keys]

    # -- send --------------------------------------------------------------------------

    def send_calls(self, runs: Sequence[Tuple[str, List[bytes]]]) -> List[Call]:
        raise NotImplementedError

    def send_failed(self, calls: Sequence[Call]) -> None:
        """``calls`` (from send_calls) raised: they may or may not have run."""

    def read_send(self, replies: List[Any]) -> int:
        """Messages refused because their channel was full, summed over the calls."""
        return sum(int(reply or 0) for reply in replies)

    # -- receive -----------------------------------------------------------------------

    def pop_call(self, queue_keys: List[bytes]) -> Call:
        raise NotImplementedError

    def read_pop(self, reply: Any) -> Optional[Popped]:
        return Popped(reply[0], reply[1]) if reply else None

    def after_wait(self, queue_key: bytes, element: bytes) -> Union[Popped, None, Call]:
        raise NotImplementedError

    def after_follow_up(self, queue_key: bytes, reply: Any) -> Optional[Popped]:
        return Popped(queue_key, reply) if reply is not None else None

    def push_back(self, queue_key: bytes, element: bytes) -> List[Command]:
        raise NotImplementedError

    def take_pending(self, queue_keys: List[bytes]) -> Optional[Popped]:
        return None

    # -- groups ------------------------------------------------------------------------

    def group_add_ops(self, group: str, channel: str, now: float) -> List[Operation]:
        raise NotImplementedError

    def group_discard_ops(self, group: str, channel: str) -> List[Operation]:
        raise NotImplementedError

    def group_members_ops(self, group: str, now: float) -> List[Operation]:
        raise NotImplementedError

    def read_group_members(self, replies: List[Any]) -> List[str]:
        raise NotImplementedError

    # -- statistics ------------------------------------------------------------------

    def channel_stats_ops(self, queue: str) -> List[Operation]:
        raise NotImplementedError

    def read_channel_stats(self, replies: List[Any]) -> Dict[str, int]:
        """``messages_count``, ``channel_full_count``, ``messages_pending``, ``messages_max_age`` on one server."""
        raise NotImplementedError

    def global_stats_pattern(self) -> Optional[str]:
        """A SCAN pattern of the global counter keys when they are spread (one per
        hash slot); the core then passes the keys found on a server to
        ``global_stats_ops``. None (the default): ``global_stats_ops()`` knows them."""
        return None

    def global_stats_ops(self, keys: Optional[List[bytes]] = None) -> List[Operation]:
        raise NotImplementedError

    def read_global_stats(self, replies: List[Any]) -> Dict[str, int]:
        """``messages_count`` and ``channel_full_count`` on one server."""
        raise NotImplementedError
