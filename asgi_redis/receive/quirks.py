"""What a receive learns about the servers it talks to, kept in one declared object."""

from __future__ import annotations

import math
import threading
from typing import Optional

import redis


class ServerQuirks:
    """Server limits learned at run time, shared by every receive of one layer.

    * ``client_unblock``: None until known; False once a server refused CLIENT
      ID or CLIENT UNBLOCK (Redis < 5, or an ACL without them). Waits that span
      several servers then take each server in turn instead of all at once.
    * ``whole_second_timeouts``: True once a server refused a fractional BLPOP
      timeout (Redis < 6); BLPOP timeouts are then rounded up to whole seconds.

    Both only ever move one way (from "maybe" to "no"), so a race between
    threads learning the same thing is harmless; the lock only keeps the
    "first to learn" answer exact for the caller that retries.
    """

    def __init__(self) -> None:
        self.client_unblock: Optional[bool] = None
        self.whole_second_timeouts = False
        self._lock = threading.Lock()

    def no_client_unblock(self) -> None:
        self.client_unblock = False

    def blpop_timeout(self, timeout: float) -> float:
        """The BLPOP timeout to send: Redis < 6 takes whole seconds only (and 0 means forever)."""
        if self.whole_second_timeouts:
            return max(1, math.ceil(timeout))
        return max(0.01, round(timeout, 3))

    def learn_from(self, error: redis.ResponseError) -> bool:
        """True (and remembered) when ``error`` is an old Redis refusing a fractional timeout:
        the BLPOP did not run, so sending it again with whole seconds repeats nothing."""
        if "timeout" not in str(error):
            return False
        with self._lock:
            if self.whole_second_timeouts:
                return False
            self.whole_second_timeouts = True
        return True
