"""Walking the keyspace without blocking the server: glob escaping and SCAN in batches.

KEYS (what 1.4.3 used) holds the server for as long as it walks every key;
SCAN returns a bounded slice per call, so a flush or an inspection of a large
keyspace never stalls the other clients.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import redis

_GLOB_SPECIAL = "*?[]\\"


def glob_escape(text: str) -> str:
    """``text`` with the glob characters of MATCH patterns escaped, so it matches only itself."""
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


def scan_batches(client: redis.Redis, pattern: str, batch: int = 1000,
                 key_budget: Optional[int] = None) -> Iterator[List[bytes]]:
    """Keys matching ``pattern``, in lists of at most ``batch`` keys (SCAN COUNT ``batch``).

    With ``key_budget``, stops once that many keys have been yielded in total
    (the last list is cut short), so a caller that wants a sample of a huge
    keyspace pays for the sample only. A key may appear twice if the keyspace
    is resized during the walk (SCAN's guarantee); callers that delete or count
    must tolerate that.
    """
    if batch < 1:
        raise ValueError(f"batch must be 1 or more, not {batch!r}")
    if key_budget is not None and key_budget < 0:
        raise ValueError(f"key_budget must be 0 or more, not {key_budget!r}")
    remaining = key_budget
    pending: List[bytes] = []
    cursor = 0
    while remaining is None or remaining > 0:
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=batch)
        pending.extend(keys)
        while len(pending) >= batch or (pending and cursor == 0):
            size = batch if remaining is None else min(batch, remaining)
            chunk, pending = pending[:size], pending[size:]
            yield chunk
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    return
        if cursor == 0:
            return
