"""Redis Cluster hash slots: CRC16 of a key's hash tag, and a short tag for every slot.

A cluster runs a script or a multi-key command only when all its keys share
one slot. Keys that must meet are named with the same ``{tag}``; a key that
must sit in the slot of another tag (the compact layout's per-slot global
statistics) is named with :func:`slot_tag` of that slot.
"""

from __future__ import annotations

import string
from typing import List, Optional, Union

SLOT_COUNT = 16384


def _crc16_table() -> List[int]:
    # CRC-16/XMODEM (polynomial 0x1021, initial value 0), what Redis Cluster hashes keys with
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM of ``data``, continuing from ``crc``."""
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` Redis Cluster hashes: the first non-empty ``{...}``, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: Union[bytes, str]) -> int:
    """The cluster slot of ``key`` (what CLUSTER KEYSLOT answers)."""
    if isinstance(key, str):
        key = key.encode("utf8")
    return crc16(hash_tag(key)) % SLOT_COUNT


# Tags for slots: "#" and three characters that never occur in channel or group
# names' tags together with "#"; 64**3 candidates cover all 16,384 slots.
_TAG_ALPHABET = (string.ascii_letters + string.digits + "-_").encode()
_slot_tags: Optional[List[bytes]] = None


def _build_slot_tags() -> List[bytes]:
    tags: List[Optional[bytes]] = [None] * SLOT_COUNT
    missing = SLOT_COUNT
    base = crc16(b"#")
    for first in _TAG_ALPHABET:
        after_first = crc16(bytes((first,)), base)
        for second in _TAG_ALPHABET:
            after_second = crc16(bytes((second,)), after_first)
            for third in _TAG_ALPHABET:
                slot = crc16(bytes((third,)), after_second) % SLOT_COUNT
                if tags[slot] is None:
                    tags[slot] = bytes((35, first, second, third))  # 35 is "#"
                    missing -= 1
                    if not missing:
                        return tags  # type: ignore[return-value]
    raise AssertionError("three characters did not cover every slot")  # pragma: no cover


def slot_tag(slot: int) -> bytes:
    """A short tag (``#`` + 3 characters) whose keys hash to ``slot``; built once, on first use."""
    global _slot_tags
    if _slot_tags is None:
        _slot_tags = _build_slot_tags()
    return _slot_tags[slot]
