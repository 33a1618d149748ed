"""asgi_redis 1.4.3's key layout, kept so old and new processes share one Redis.

Key by key (docs/layout.md has the whole picture):

* ``<prefix><channel>`` - the queue: a list of body key names (TTL expiry + 1);
* ``<prefix><32 hex digits>`` - one message body (msgpack, maybe Fernet; TTL expiry);
* ``<prefix>:group:<group>`` - a sorted set of member channels scored by add time;
* ``<stats_prefix><channel>:messages_count`` / ``:channel_full_count`` and the
  same under ``#global#`` - statistics counters (TTL 3600 s / 86400 s).

A blocking receive BLPOPs body key names, so the body is a second step
(take_body.lua). ``?``/``!`` queues and groups live on the shard of 1.4.3's
crc32 ``shard_index``; the router spreads normal channels over every shard.
The scripts are the files in ``asgi_redis/lua/``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import scripts
from ..connections import shard_index
from ..keyspace import glob_escape
from .base import Call, Command, Layout, LayoutSettings, Operation, Popped

GROUP_CHUNK = 1000  # messages per send.lua call: bounds how long one call holds Redis
GLOBAL_STATS_NAME = "#global#"
_STATS = ("messages_count", "channel_full_count")


class ClassicLayout(Layout):
    """The 1.4.3 layout (version 0: it writes no marker, as 1.4.3 wrote none)."""

    name = "classic"
    version = 0

    def __init__(self, settings: LayoutSettings) -> None:
        super().__init__(settings)
        self._key_prefix = settings.prefix.encode("utf8")
        # send.lua's fixed arguments, encoded once (every argument costs on the hot path)
        self._send_constants = [
            str(settings.expiry).encode(),
            settings.stats_prefix.encode("utf8"),
            str(len(self._key_prefix)).encode(),
        ]

    # -- key names ---------------------------------------------------------------------

    def queue_key(self, name: str, tag: Optional[str] = None) -> bytes:
        return self._key_prefix + name.encode("utf8")

    def channel_of(self, queue_key: bytes) -> str:
        return queue_key.decode("utf8")[len(self.settings.prefix):]

    def new_channel_probe(self, name: str) -> Command:
        return Command(("EXISTS", self.settings.prefix + name))

    def scan_patterns(self) -> List[str]:
        return [glob_escape(self.settings.prefix) + "*", glob_escape(self.settings.stats_prefix) + "*"]

    def group_key(self, group: str) -> str:
        return f"{self.settings.prefix}:group:{group}"

    def stats_key(self, channel: str, counter: str) -> str:
        return f"{self.settings.stats_prefix}{channel}:{counter}"

    # -- routing ---------------------------------------------------------------------------

    def shard_of(self, name: str, shard_count: int) -> int:
        return shard_index(name, shard_count)

    # -- send ----------------------------------------------------------------------------------

    def send_calls(self, runs: Sequence[Tuple[str, List[bytes]]]) -> List[Call]:
        if len(runs) == 1 and len(runs[0][1]) <= GROUP_CHUNK:
            return [self._send_call(runs)]  # the hot path: one message on one channel
        return [self._send_call(chunk) for chunk in _chunk_runs(runs, GROUP_CHUNK)]

    def _send_call(self, runs: Sequence[Tuple[str, List[bytes]]]) -> Call:
        """send.lua for runs of ``(queue, bodies to queue on it)``."""
        keys: List[bytes] = []
        run_args: List[Any] = []
        bodies: List[bytes] = []
        body_numbers: Dict[int, int] = {}  # by identity: a group's shared body is sent once
        capacity_for = self.settings.capacity_for
        for queue, run_bodies in runs:
            keys.append(self._key_prefix + queue.encode("utf8"))
            keys += self._new_body_keys(len(run_bodies))
            run_args += [capacity_for(queue), len(run_bodies)]
            for body in run_bodies:
                number = body_numbers.get(id(body))
                if number is None:
                    bodies.append(body)
                    number = body_numbers[id(body)] = len(bodies)
                run_args.append(number)
        return Call(scripts.SEND, keys, [*self._send_constants, len(bodies), *bodies, *run_args])

    def _new_body_keys(self, count: int) -> List[bytes]:
        """Body keys as 1.4.3 named them: prefix + 32 hex digits of a uuid4.

        Built from one urandom call; uuid.uuid4().hex costs several times more
        and shows up in send_group profiles."""
        raw = bytearray(os.urandom(16 * count))
        keys = []
        for start in range(0, 16 * count, 16):
            raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
            raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
            keys.append(self._key_prefix + raw[start:start + 16].hex().encode())
        return keys

    # -- receive -------------------------------------------------------------------------------

    def pop_call(self, queue_keys: List[bytes]) -> Call:
        return Call(scripts.POP, queue_keys)

    def after_wait(self, queue_key: bytes, element: bytes) -> Union[Popped, None, Call]:
        # the queue holds body key names: read and delete the body (take_body.lua)
        return Call(scripts.TAKE_BODY, [element])

    def push_back(self, queue_key: bytes, element: bytes) -> List[Command]:
        return [
            Command(("LPUSH", queue_key, element)),
            Command(("EXPIRE", queue_key, self.settings.expiry + 1)),
        ]

    # -- groups ------------------------------------------------------------------------------------

    def group_add_ops(self, group: str, channel: str, now: float) -> List[Operation]:
        return [Call(scripts.GROUP_ADD, [self.group_key(group)], [repr(now), channel, self.settings.group_expiry])]

    def group_discard_ops(self, group: str, channel: str) -> List[Operation]:
        return [Command(("ZREM", self.group_key(group), channel))]

    def group_members_ops(self, group: str, now: float) -> List[Operation]:
        cutoff = int(now) - self.settings.group_expiry
        return [Call(scripts.GROUP_MEMBERS, [self.group_key(group)], [cutoff])]

    def read_group_members(self, replies: List[Any]) -> List[str]:
        return [member.decode("utf8") for member in replies[0]]

    # -- statistics ----------------------------------------------------------------------------------

    def channel_stats_ops(self, queue: str) -> List[Operation]:
        keys = [self.settings.prefix + queue, *(self.stats_key(queue, name) for name in _STATS)]
        return [Call(scripts.CHANNEL_STATS, keys, [self.settings.expiry])]

    def read_channel_stats(self, replies: List[Any]) -> Dict[str, int]:
        count, full, pending, age = replies[0]
        return {"messages_count": count, "channel_full_count": full,
                "messages_pending": pending, "messages_max_age": age}

    def global_stats_ops(self, keys: Optional[List[bytes]] = None) -> List[Operation]:
        return [Command(("MGET", *(self.stats_key(GLOBAL_STATS_NAME, name) for name in _STATS)))]

    def read_global_stats(self, replies: List[Any]) -> Dict[str, int]:
        return {name: int(value or 0) for name, value in zip(_STATS, replies[0])}


def _chunk_runs(runs: Sequence[Tuple[str, List[bytes]]], size: int) -> List[List[Tuple[str, List[bytes]]]]:
    """Split per-queue runs into script calls of at most ``size`` messages each."""
    chunks: List[List[Tuple[str, List[bytes]]]] = []
    chunk: List[Tuple[str, List[bytes]]] = []
    room = size
    for queue, bodies in runs:
        while bodies:
            part, bodies = bodies[:room], bodies[room:]
            chunk.append((queue, part))
            room -= len(part)
            if room == 0:
                chunks.append(chunk)
                chunk, room = [], size
    if chunk:
        chunks.append(chunk)
    return chunks
