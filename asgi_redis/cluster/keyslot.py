"""Which of Redis Cluster's 16,384 hash slots a key lives in.

The cluster hashes a key with CRC16 (the XMODEM variant: polynomial 0x1021,
initial value 0) modulo 16384. When the key holds a hash tag, a non-empty
``{...}`` (the first ``{`` and the first ``}`` after it), only the tag is
hashed, which is how a layout puts several keys in one slot on purpose.
The tests check this against the server's own ``CLUSTER KEYSLOT``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Union

SLOT_COUNT = 16384


def _crc16_table() -> List[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of ``data``, as Redis Cluster computes it."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` the cluster hashes: its hash tag, or the whole key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:  # "{}" is no tag: the whole key is hashed
            return key[start + 1:end]
    return key


@lru_cache(maxsize=4096)
def _tag_slot(tag: bytes) -> int:
    # layouts reuse a handful of tags for many keys: hashing each once is enough
    return crc16(tag) % SLOT_COUNT


def key_slot(key: Union[bytes, str]) -> int:
    """The hash slot of ``key`` (str keys are UTF-8 encoded, as redis-py sends them)."""
    if isinstance(key, str):
        key = key.encode("utf8")
    elif not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a key must be bytes or str, not {type(key).__name__}: {key!r:.80}")
    tag = hash_tag(bytes(key))
    if len(tag) <= 64:
        return _tag_slot(tag)
    return crc16(tag) % SLOT_COUNT


__all__ = ["SLOT_COUNT", "crc16", "hash_tag", "key_slot"]
