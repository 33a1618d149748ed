"""What the Channels 4 tests (test_modern.py, test_modern_pubsub.py) share:
the event loop channels_redis's side runs in, and the configurations both
producers are checked under. Imported only in the ``modern`` tox env."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any, Callable, Coroutine, Dict

KEYS = ["first secret", "older secret"]

# the name of each configuration (a test id) and the keywords it adds
CONFIGS: Dict[str, Dict[str, Any]] = {
    "plain": {},
    "encrypted": {"symmetric_encryption_keys": KEYS},
    "json": {"serializer_format": "json"},
}

LOOP = asyncio.new_event_loop()  # one for the whole run, as a consumer process has


def run(coroutine: Coroutine, timeout: float = 60) -> Any:
    """channels_redis's side, in one event loop for the run as in a real consumer
    process (a fresh loop per call once left its receive stuck on a loaded machine);
    a stall fails the test instead of hanging the run."""
    return LOOP.run_until_complete(asyncio.wait_for(coroutine, timeout))


def in_forked_child(target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(*args)`` in a forked child (a producer used before the fork) and check it succeeded."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(30)
    assert child.exitcode == 0
