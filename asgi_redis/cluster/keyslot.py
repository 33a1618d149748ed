"""Which of Redis Cluster's 16,384 hash slots a key lives in, for routing.

The cluster hashes a key with CRC16 (the XMODEM variant) modulo 16384; when
the key holds a hash tag, a non-empty ``{...}`` (the first ``{`` and the
first ``}`` after it), only the tag is hashed. The hash itself lives with the
layout that names keys by tags (``asgi_redis.layouts.slots``); the router
adds what it needs on every call: str keys, and a cache per tag, since a
layout reuses a handful of tags for many keys. The tests check both against
the server's own ``CLUSTER KEYSLOT``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Union

from ..layouts.slots import SLOT_COUNT, crc16, hash_tag

_CACHED_TAG_LENGTH = 64  # longer tags (whole long keys) are hashed each time, not kept


@lru_cache(maxsize=4096)
def _tag_slot(tag: bytes) -> int:
    return crc16(tag) % SLOT_COUNT


def key_slot(key: Union[bytes, str]) -> int:
    """The hash slot of ``key`` (str keys are UTF-8 encoded, as redis-py sends them)."""
    if isinstance(key, str):
        key = key.encode("utf8")
    elif not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a key must be bytes or str, not {type(key).__name__}: {key!r:.80}")
    tag = hash_tag(bytes(key))
    if len(tag) <= _CACHED_TAG_LENGTH:
        return _tag_slot(tag)
    return crc16(tag) % SLOT_COUNT


__all__ = ["SLOT_COUNT", "crc16", "hash_tag", "key_slot"]
