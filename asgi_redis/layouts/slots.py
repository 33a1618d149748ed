"""Redis Cluster hash slots: CRC16 of a key's hash tag, and a short tag for every slot.

A cluster runs a script or a multi-key command only when all its keys share
one slot. Keys that must meet are named with the same ``{tag}``; a key that
must sit in the slot of another tag (the compact layout's per-slot global
statistics) is named with :func:`slot_tag` of that slot.
"""

from __future__ import annotations

import binascii
import string
from typing import List, Optional, Union

SLOT_COUNT = 16384


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM of ``data`` (polynomial 0x1021), continuing from ``crc``:
    what Redis Cluster hashes keys with. binascii's CRC-CCITT is that CRC, in C."""
    return binascii.crc_hqx(data, crc)


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
