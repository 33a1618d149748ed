"""The compact layout: each message stored in its queue entry, cluster-safe keys.

Key by key (docs/compact-layout.md has the whole picture; ``P`` is the prefix,
``S`` the statistics prefix, ``c1`` the layout and its version):

* ``P c1{<name>}`` - queue of a ``?`` channel or of a ``!`` channel's non-local
  name (list of entries; TTL expiry + 1 s);
* ``P c1{#<bucket>}<name>`` - queue of a normal channel in a bucket (list);
* ``P c1{<group>}:group`` - group members scored by add time (sorted set);
* ``S c1{<tag>}[<name>]`` - channel counters, beside the queue (hash, TTL 3600 s);
* ``S c1{#xyz}#global`` - global counters of one hash slot (hash, TTL 86400 s),
  named by a tag that hashes to the slot of the queue it counts for.

An entry is ``1`` (version) + a 13-digit deadline (unix ms) + a kind + its
payload: ``m`` + one message body, or ``f`` + the comma-separated local parts
of member channels of one ``foo!`` queue + newline + one body they share
(send_group's one entry per receiving process). A BLPOP reply therefore holds
the message itself: no second round trip after a wait.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

import redis

from .. import checkout, scripts
from ..keyspace import glob_escape
from .base import Call, Command, GroupEntry, Layout, LayoutMismatch, LayoutSettings, Operation, Popped
from .slots import SLOT_COUNT, key_slot, slot_tag

SEND = scripts.load_script("asgi_redis", "compact_send", hot=True)  # one message on one queue
SEND_RUNS = scripts.load_script("asgi_redis", "compact_send_runs", hot=True)  # the general case
POP = scripts.load_script("asgi_redis", "compact_pop", hot=True)
CHANNEL_STATS = scripts.load_script("asgi_redis", "compact_channel_stats")

VERSION = 1
DEFAULT_BUCKET = "#0"
FANOUT_CHUNK = 1000  # member channels named by one entry: bounds a receiver's buffer
_SEND_KEYS_CACHED = 4096
# A sender sets a queue's and its counters' TTLs again at most this often (the
# scripts' REFRESH): TTLs carry this much slack, so they never run out early
REFRESH_SECONDS = 60
CALL_ENTRIES = 1000  # entries per send call at most (as the classic layout's chunks)
_STATS = ("messages_count", "channel_full_count")
_VERSION_BYTE = b"1"
_SINGLE, _FANOUT = b"m", b"f"
_HEAD = 15  # version byte, 13-digit deadline, kind byte
_SINGLE_HEAD = _VERSION_BYTE + b"%013d" + _SINGLE  # formatted with the deadline: a one-message entry's head
_USE_SCRIPT = object()  # _PlainPop: the plain command could not settle it
Body = Union[bytes, GroupEntry]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _live(entry: bytes, now: int) -> bool:
    """Whether a popped entry is to be handed over: live, or foreign (refused loudly later)."""
    deadline = entry[1:14]
    return entry[:1] != _VERSION_BYTE or not deadline.isdigit() or int(deadline) > now


class _PlainPop:
    """The non-blocking pop without a script: ``LPOP`` for one queue, ``LMPOP``
    (Redis 7+) for several, else ``compact_pop.lua``. A plain command costs
    Redis a third of the script. When it pops an expired entry (a receiver was
    away longer than ``expiry``), the entry is dropped and the Lua pop, which
    drops the rest of the dead ones in the same call, looks again: two round
    trips at most. Stands where a Call's script goes."""

    name = "compact pop (LPOP / LMPOP)"

    def __init__(self) -> None:
        self.lmpop = True  # False once a server answered that it lacks LMPOP

    def __call__(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        command = self._command(keys)
        if command is not None:
            try:
                reply = checkout.execute(client, *command) if type(client) is redis.Redis \
                    else client.execute_command(*command)
                outcome = self._outcome(keys, reply)
            except redis.ResponseError as error:
                outcome = self._learn(error)
            if outcome is not _USE_SCRIPT:
                return outcome
        return POP(client, keys, [str(_now_ms()).encode()])

    async def call_async(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        command = self._command(keys)
        if command is not None:
            try:
                outcome = self._outcome(keys, await client.execute_command(*command))
            except redis.ResponseError as error:
                outcome = self._learn(error)
            if outcome is not _USE_SCRIPT:
                return outcome
        return await POP.call_async(client, keys, [str(_now_ms()).encode()])

    def _command(self, keys: Sequence[Any]) -> Optional[Tuple[Any, ...]]:
        if len(keys) == 1:
            return ("LPOP", keys[0])
        return ("LMPOP", len(keys), *keys, "LEFT") if self.lmpop else None

    @staticmethod
    def _outcome(keys: Sequence[Any], reply: Any) -> Any:
        """The pop's reply ({queue key, entry} or False), or _USE_SCRIPT for a dead entry
        (dropped: the script drops the other dead ones at once and looks again)."""
        if not reply:
            return False
        found = [keys[0], reply] if len(keys) == 1 else [reply[0], reply[1][0]]
        return found if _live(found[1], _now_ms()) else _USE_SCRIPT

    def _learn(self, error: Exception) -> Any:
        # not gated on self.lmpop: threads that sent LMPOP before the first of
        # them learnt get the same refusal, and the script serves them too
        if "unknown command" in str(error).lower():
            self.lmpop = False  # Redis < 7: the script from now on
            return _USE_SCRIPT
        raise error


class _SendKeys:
    """What a send to one queue needs, computed once; ``due``/``epoch``: when
    this sender last set the keys' TTLs (compact_send.lua, ARGV[4])."""

    __slots__ = ("keys", "slot", "capacity", "generation", "due", "epoch")

    def __init__(self, keys: Tuple[bytes, bytes, bytes], slot: int, capacity: bytes, generation: Any):
        self.keys, self.slot, self.capacity, self.generation = keys, slot, capacity, generation
        self.due, self.epoch = 0.0, -1


class CompactLayout(Layout):
    """One list entry per message (or per receiving process for send_group), every
    key a call touches in one hash slot.

    ``split_by_slot``: on a plain Redis one pop or BLPOP covers queues of several
    slots (one wait per server); a cluster layer sets it so each covers one slot.
    Sends are always one call per slot.
    """

    name = "compact"
    version = VERSION
    fans_out = True
    split_by_slot = False

    def __init__(self, settings: LayoutSettings) -> None:
        super().__init__(settings)
        for what, value in (("prefix", settings.prefix), ("stats_prefix", settings.stats_prefix)):
            if "{" in value or "}" in value:
                raise ValueError(
                    f"{what} {value!r} holds a brace: the compact layout names hash slots "
                    "with {...} tags, so its prefixes must not contain '{' or '}'"
                )
        self._queue_base = (settings.prefix + "c1{").encode("utf8")
        self._stats_base = (settings.stats_prefix + "c1{").encode("utf8")
        self._expiry_ms = settings.expiry * 1000
        self._queue_ttl = str(self._expiry_ms + 1000 + REFRESH_SECONDS * 1000).encode()
        self._pending: Dict[bytes, Deque[Tuple[str, bytes, int]]] = {}
        self._pending_lock = threading.Lock()
        self._plain_pop = _PlainPop()
        self._send_keys_cache: Dict[str, _SendKeys] = {}
        self._refresh_epoch = 0  # raised when a send failed: its TTLs may not have been set

    # -- key names ---------------------------------------------------------------------

    def queue_key(self, name: str, tag: Optional[str] = None) -> bytes:
        if "?" in name or "!" in name:
            return self._queue_base + name.encode("utf8") + b"}"
        return self._queue_base + (tag or DEFAULT_BUCKET).encode("utf8") + b"}" + name.encode("utf8")

    def channel_of(self, queue_key: bytes) -> str:
        tag, _, rest = queue_key[len(self._queue_base):].partition(b"}")
        return (rest or tag).decode("utf8")

    def group_key(self, group: str) -> str:
        return f"{self.settings.prefix}c1{{{group}}}:group"

    def stats_key(self, queue_key: bytes) -> bytes:
        """The channel counters beside a queue (same tag, so same slot)."""
        return self._stats_base + queue_key[len(self._queue_base):]

    def global_stats_key(self, queue_key: bytes) -> bytes:
        """The global counters of the slot ``queue_key`` is in."""
        return self._stats_base + slot_tag(key_slot(queue_key)) + b"}#global"

    # -- reading keys back (the CLI's inspect and stats) ---------------------------------

    @property
    def key_prefix(self) -> str:
        """What every queue and group key of this layout starts with."""
        return self.settings.prefix + "c1{"

    def group_of(self, key: bytes) -> Optional[str]:
        """The group a key holds, or None when it is no group key."""
        if not key.startswith(self._queue_base) or not key.endswith(b"}:group"):
            return None
        return key[len(self._queue_base):-len(b"}:group")].decode("utf8", "replace")

    def channel_of_stats_key(self, key: bytes) -> Optional[str]:
        """The channel a counters hash is for, or None for global counters and foreign keys."""
        if not key.startswith(self._stats_base) or key.endswith(b"}#global"):
            return None
        return self.channel_of(self._queue_base + key[len(self._stats_base):])

    def entry_age(self, entry: Optional[bytes], now: float) -> Optional[float]:
        """Seconds since an entry was sent, read from its deadline; None for no entry."""
        deadline = entry[1:14] if entry else b""
        if not deadline.isdigit():
            return None
        return max(0.0, self.settings.expiry - (int(deadline) / 1000.0 - now))

    def new_channel_probe(self, name: str) -> Command:
        return Command(("EXISTS", self.queue_key(name)))

    def scan_patterns(self) -> List[str]:
        # only this layout's keys: a flush during a cut-over leaves 1.4.3's keys alone
        return [glob_escape(self.settings.prefix + "c1{") + "*", glob_escape(self.settings.stats_prefix + "c1{") + "*"]

    def global_stats_pattern(self) -> Optional[str]:
        return glob_escape(self.settings.stats_prefix + "c1{#") + "???}#global"

    # -- routing ---------------------------------------------------------------------------

    def shard_of(self, name: str, shard_count: int) -> int:
        # by the name's cluster slot, so a name's server follows its tag
        return key_slot(name.encode("utf8")) * shard_count // SLOT_COUNT

    def group_keys(self, queue_keys: List[bytes]) -> List[List[bytes]]:
        if not self.split_by_slot:
            return [queue_keys]
        by_slot: Dict[int, List[bytes]] = {}
        for key in queue_keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        return list(by_slot.values())

    # -- send --------------------------------------------------------------------------------

    def send_calls(self, runs: Sequence[Tuple[str, List[Body]]]) -> List[Call]:
        """One call per hash slot with ``split_by_slot`` (a cluster); else one call
        for every run (a plain Redis has no slots; each run's keys still share one)."""
        now = _now_ms()
        if len(runs) == 1 and len(runs[0][1]) == 1 and type(runs[0][1][0]) is bytes:
            # the usual send: the short script, arguments ready-made
            queue, (body,) = runs[0]
            keys = self._send_keys(queue)
            entry = _SINGLE_HEAD % (now + self._expiry_ms) + body
            return [Call(SEND, keys.keys, (b"%d" % now, keys.capacity, entry, self._refresh(keys), self._queue_ttl))]
        head = _VERSION_BYTE + b"%013d" % (now + self._expiry_ms)
        constants = [str(now).encode(), self._queue_ttl]
        done: List[Call] = []
        open_calls: Dict[int, Tuple[List[bytes], List[Any], List[int]]] = {}
        for queue, bodies in runs:
            keys = self._send_keys(queue)
            entries: List[Any] = []
            for body in bodies:
                if isinstance(body, GroupEntry):
                    entries += self._fanout_entries(head, queue, body)
                else:
                    entries += [1, head + _SINGLE + body]
            where = keys.slot if self.split_by_slot else 0
            call_keys, call_args, size = open_calls.setdefault(where, ([], [*constants], [0]))
            call_keys.extend(keys.keys)
            call_args.extend((keys.capacity, self._refresh(keys), len(entries) // 2, *entries))
            size[0] += len(entries) // 2
            if size[0] >= CALL_ENTRIES:  # bounds how long one call holds Redis
                done.append(Call(SEND_RUNS, call_keys, call_args))
                del open_calls[where]
        return done + [Call(SEND_RUNS, keys, args) for keys, args, _ in open_calls.values()]

    def send_failed(self, calls: Sequence[Call]) -> None:
        # TTLs these calls were to set again may not be set: every queue sets them on its next send
        self._refresh_epoch += 1

    def _refresh(self, keys: _SendKeys) -> bytes:
        """b"1" when this sender is to set the TTLs of ``keys`` again (then not for REFRESH_SECONDS)."""
        now = time.monotonic()
        if now < keys.due and keys.epoch == self._refresh_epoch:
            return b"0"
        keys.due, keys.epoch = now + REFRESH_SECONDS, self._refresh_epoch
        return b"1"

    def _send_keys(self, queue: str) -> _SendKeys:
        """Queue key, its counters, its slot's global counters, slot and capacity of a
        queue, remembered for the queues sent to most (a send computes none of it again)."""
        found = self._send_keys_cache.get(queue)
        generation = self.keys_generation()
        if found is None or found.generation is not generation:
            key = self.queue_key(queue)
            found = _SendKeys((key, self.stats_key(key), self.global_stats_key(key)), key_slot(key),
                              str(self.settings.capacity_for(queue)).encode(), generation)
            if len(self._send_keys_cache) >= _SEND_KEYS_CACHED:
                self._send_keys_cache.clear()  # single-use ? names must not grow it without end
            self._send_keys_cache[queue] = found
        return found

    def keys_generation(self) -> Any:
        """What queue key names depend on besides the name (a cluster's bucket choice);
        remembered key names are recomputed when it is another object."""
        return None

    def _fanout_entries(self, head: bytes, queue: str, entry: GroupEntry) -> List[Any]:
        """(message count, entry) pairs naming at most FANOUT_CHUNK members each."""
        cut = len(queue)
        suffixes = [channel[cut:].encode("utf8") for channel in entry.channels]
        pairs: List[Any] = []
        for start in range(0, len(suffixes), FANOUT_CHUNK):
            part = suffixes[start:start + FANOUT_CHUNK]
            pairs += [len(part), head + _FANOUT + b",".join(part) + b"\n" + entry.body]
        return pairs

    # -- receive -------------------------------------------------------------------------------

    def pop_call(self, queue_keys: List[bytes]) -> Call:
        return Call(self._plain_pop, queue_keys)  # type: ignore[arg-type]

    def read_pop(self, reply: Any) -> Optional[Popped]:
        return self.after_wait(reply[0], reply[1]) if reply else None

    def after_wait(self, queue_key: bytes, element: bytes) -> Optional[Popped]:
        if element[:1] != _VERSION_BYTE or len(element) < _HEAD:
            raise LayoutMismatch(
                f"queue {queue_key!r} held an entry not written by the compact layout "
                f"version {VERSION} ({element[:20]!r}...); is another layout or version "
                "using this prefix? It was dropped"
            )
        deadline = int(element[1:14])
        if deadline <= _now_ms():
            return None  # expired while it waited: never delivered
        kind = element[14:15]
        if kind == _SINGLE:
            return Popped(queue_key, element[_HEAD:])
        newline = element.index(b"\n", _HEAD)
        body = element[newline + 1:]
        name = self.channel_of(queue_key)
        channels = [name + suffix.decode("utf8") for suffix in element[_HEAD:newline].split(b",")]
        if len(channels) == 1 and queue_key not in self._pending:
            return Popped(queue_key, body, channels[0])
        with self._pending_lock:
            # behind what another thread's pop left here, so the queue's order holds
            self._pending.setdefault(queue_key, deque()).extend((channel, body, deadline) for channel in channels)
        return self.take_pending([queue_key])

    def push_back(self, queue_key: bytes, element: bytes) -> List[Command]:
        return [Command(("LPUSH", queue_key, element)), Command(("PEXPIRE", queue_key, self._queue_ttl))]

    def take_pending(self, queue_keys: List[bytes]) -> Optional[Popped]:
        """The next member of a fanned-out entry still held for one of ``queue_keys``.

        Held in this process only: if it dies, the rest of the entry is lost (at
        most once: never delivered twice). A receive serves these before it pops
        again, so one queue holds at most FANOUT_CHUNK - 1 per receiving thread."""
        if not self._pending:
            return None
        now = _now_ms()
        with self._pending_lock:
            for key in queue_keys:
                held = self._pending.get(key)
                while held:
                    channel, body, deadline = held.popleft()
                    if not held:
                        del self._pending[key]
                    if deadline > now:
                        return Popped(key, body, channel)
        return None

    def pending_count(self) -> int:
        """Messages held in memory for fan-out (for tests and the soak figures)."""
        with self._pending_lock:
            return sum(len(held) for held in self._pending.values())

    # -- groups ------------------------------------------------------------------------------------

    def group_add_ops(self, group: str, channel: str, now: float) -> List[Operation]:
        return [Call(scripts.GROUP_ADD, [self.group_key(group)], [repr(now), channel, self.settings.group_expiry])]

    def group_discard_ops(self, group: str, channel: str) -> List[Operation]:
        return [Command(("ZREM", self.group_key(group), channel))]

    def group_members_ops(self, group: str, now: float) -> List[Operation]:
        # plain commands in one pipeline (one round trip): a script would copy every
        # member into Lua and back, most of the Redis time of a large send_group
        key = self.group_key(group)
        cutoff = int(now) - self.settings.group_expiry
        return [Command(("ZREMRANGEBYSCORE", key, 0, cutoff)), Command(("ZRANGE", key, 0, -1))]

    def read_group_members(self, replies: List[Any]) -> List[str]:
        return [member.decode("utf8") for member in replies[-1]]

    # -- statistics ----------------------------------------------------------------------------------

    def channel_stats_ops(self, queue: str) -> List[Operation]:
        key = self.queue_key(queue)
        return [Call(CHANNEL_STATS, [key, self.stats_key(key)], [str(_now_ms()).encode(), self._expiry_ms])]

    def read_channel_stats(self, replies: List[Any]) -> Dict[str, int]:
        count, full, pending, age = replies[0]
        return {"messages_count": count, "channel_full_count": full,
                "messages_pending": pending, "messages_max_age": age}

    def global_stats_ops(self, keys: Optional[List[bytes]] = None) -> List[Operation]:
        return [Command(("HMGET", key, *_STATS)) for key in keys or ()]

    def read_global_stats(self, replies: List[Any]) -> Dict[str, int]:
        totals = dict.fromkeys(_STATS, 0)
        for values in replies:
            for name, value in zip(_STATS, values):
                totals[name] += int(value or 0)
        return totals
