"""Who owns which hash slot: the slot map, read from any cluster node.

Redis 7+ answers ``CLUSTER SHARDS`` (one entry per shard: its slot ranges
and its nodes, each with role, health, endpoint, port and TLS port); older
servers only ``CLUSTER SLOTS`` (slot ranges with the master first, then its
replicas). Both become a :class:`SlotMap`, an immutable snapshot: a refresh
builds a new one and swaps it in, so threads never see half a map.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .keyslot import SLOT_COUNT

Address = Tuple[str, int]
UNCOVERED = -1  # no master serves the slot


class SlotMap:
    """slot -> master address, plus each master's replicas (where to ask for a newer map)."""

    __slots__ = ("_owners", "_masters", "replicas", "_firsts")

    def __init__(self, owners: Sequence[int], masters: Sequence[Address],
                 replicas: Optional[Dict[Address, List[Address]]] = None):
        if len(owners) != SLOT_COUNT:
            raise ValueError(f"a slot map needs {SLOT_COUNT} entries, got {len(owners)}")
        self._owners = list(owners)
        self._masters = list(masters)
        self.replicas: Dict[Address, List[Address]] = dict(replicas or {})
        self._firsts: Optional[List[int]] = None

    @classmethod
    def from_ranges(cls, ranges: Iterable[Tuple[int, int, Address]],
                    replicas: Optional[Dict[Address, List[Address]]] = None) -> SlotMap:
        """Build from ``(first slot, last slot, master address)`` ranges."""
        owners = [UNCOVERED] * SLOT_COUNT
        masters: List[Address] = []
        index_of: Dict[Address, int] = {}
        for first, last, address in ranges:
            if not (0 <= first <= last < SLOT_COUNT):
                raise ValueError(f"slot range {first}-{last} is outside 0-{SLOT_COUNT - 1}")
            if address not in index_of:
                index_of[address] = len(masters)
                masters.append(address)
            owners[first:last + 1] = [index_of[address]] * (last - first + 1)
        return cls(owners, masters, replicas)

    def owner(self, slot: int) -> Optional[Address]:
        """The master serving ``slot``, or None when no node does."""
        index = self._owners[slot]
        return None if index == UNCOVERED else self._masters[index]

    def first_slot_of_owner(self, slot: int) -> int:
        """The lowest slot of the master owning ``slot``: one slot standing for that master."""
        if self._firsts is None:
            firsts = [-1] * len(self._masters)
            for index, owner in enumerate(self._owners):
                if owner != UNCOVERED and firsts[owner] == -1:
                    firsts[owner] = index
            self._firsts = firsts
        owner = self._owners[slot]
        return slot if owner == UNCOVERED else self._firsts[owner]

    def masters(self) -> List[Address]:
        """Every master owning at least one slot, in the order first seen."""
        used = set(self._owners)
        return [address for index, address in enumerate(self._masters) if index in used]

    def nodes(self) -> List[Address]:
        """Masters, then their replicas: every node worth asking for a newer map."""
        found = self.masters()
        for master in list(found):
            found += [replica for replica in self.replicas.get(master, []) if replica not in found]
        return found

    def uncovered(self) -> int:
        return sum(1 for index in self._owners if index == UNCOVERED)

    def moved(self, slot: int, address: Address) -> SlotMap:
        """A copy where ``slot`` belongs to ``address`` (what a MOVED reply says)."""
        owners, masters = list(self._owners), list(self._masters)
        if address not in masters:
            masters.append(address)
        owners[slot] = masters.index(address)
        return SlotMap(owners, masters, self.replicas)

    def ranges(self) -> List[Tuple[int, int, Address]]:
        """``(first, last, master)`` runs, for messages and the CLI."""
        runs: List[Tuple[int, int, Address]] = []
        start = 0
        for slot in range(1, SLOT_COUNT + 1):
            if slot == SLOT_COUNT or self._owners[slot] != self._owners[start]:
                if self._owners[start] != UNCOVERED:
                    runs.append((start, slot - 1, self._masters[self._owners[start]]))
                start = slot
        return runs


def _text(value: Any) -> str:
    return value.decode("utf8", "replace") if isinstance(value, bytes) else str(value)


def _fields(value: Any) -> Dict[str, Any]:
    """A RESP3 map, or RESP2's flat [name, value, name, value...] list, as a str-keyed dict."""
    if isinstance(value, dict):
        return {_text(key): item for key, item in value.items()}
    items = list(value)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _endpoint(host: Any, asked_host: str) -> str:
    # "?" (unknown endpoint) or "" (same host as the node asked) per the cluster spec
    text = _text(host) if host is not None else ""
    return asked_host if text in ("", "?") else text


def parse_shards(reply: Any, asked_host: str, tls: bool) -> SlotMap:
    """A map from ``CLUSTER SHARDS`` asked of a node at ``asked_host``."""
    ranges: List[Tuple[int, int, Address]] = []
    replicas: Dict[Address, List[Address]] = {}
    for shard in reply:
        shard = _fields(shard)
        master: Optional[Address] = None
        others: List[Address] = []
        for node in shard.get("nodes", []):
            node = _fields(node)
            port = node.get("tls-port") if tls and node.get("tls-port") else node.get("port")
            if not port:
                continue
            host = node.get("endpoint") if "endpoint" in node else node.get("ip")
            address = (_endpoint(host, asked_host), int(port))
            if _text(node.get("role", "")) == "master":
                master = address
            else:
                others.append(address)
        if master is None:
            continue  # no master (yet): its slots are uncovered
        replicas[master] = others
        slots = [int(slot) for slot in shard.get("slots", [])]
        ranges += [(slots[i], slots[i + 1], master) for i in range(0, len(slots) - 1, 2)]
    return SlotMap.from_ranges(ranges, replicas)


def parse_slots(reply: Any, asked_host: str) -> SlotMap:
    """A map from ``CLUSTER SLOTS`` (servers without CLUSTER SHARDS)."""
    ranges: List[Tuple[int, int, Address]] = []
    replicas: Dict[Address, List[Address]] = {}
    for entry in reply:
        first, last, master_info, *replica_infos = entry
        master = (_endpoint(master_info[0], asked_host), int(master_info[1]))
        ranges.append((int(first), int(last), master))
        known = replicas.setdefault(master, [])
        for info in replica_infos:
            address = (_endpoint(info[0], asked_host), int(info[1]))
            if address not in known:
                known.append(address)
    return SlotMap.from_ranges(ranges, replicas)


__all__ = ["Address", "SlotMap", "parse_shards", "parse_slots"]
