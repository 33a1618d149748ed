"""The Lua scripts, read once at import and run by SHA on any shard's client.

Files are listed by name (not globbed) so a missing one fails at import.
"""

from __future__ import annotations

import hashlib
import pkgutil
from typing import Any, List, NamedTuple, Sequence, Tuple, Union

import redis
from redis.exceptions import NoScriptError

from . import checkout


class LuaScript:
    """One script: EVALSHA, and on NOSCRIPT (fresh server, failover, SCRIPT FLUSH)
    load it and run it again. NOSCRIPT means the script did not run, so the
    retry cannot repeat an effect."""

    def __init__(self, name: str, source: bytes, hot: bool = False):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source).hexdigest()
        # hot: a send or a pop, run on a borrowed connection (checkout.py: a fifth of a
        # loopback round trip less); the rest through redis-py's client as usual
        self.hot = hot

    def __call__(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        direct = self.hot and type(client) is redis.Redis
        for attempt in range(3):
            try:
                if direct:
                    return checkout.execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                if attempt == 2:
                    raise
                # a reconnect may land on another server (failover) that lacks it too
                client.script_load(self.source)

    async def call_async(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """The same with a redis.asyncio client."""
        for _ in range(2):
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipeline: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
        """Add a call to a pipeline; see run_pipeline for the NOSCRIPT handling."""
        pipeline.evalsha(self.sha, len(keys), *keys, *args)


class Call(NamedTuple):
    """One Lua script call on one server (what a key layout asks the core to run)."""

    script: LuaScript
    keys: Sequence[Any]
    args: Sequence[Any] = ()


class Command(NamedTuple):
    """One plain Redis command on one server, e.g. ``Command(("ZREM", key, member))``."""

    args: Tuple[Any, ...]


Operation = Union[Call, Command]


def run(client: Any, operations: Sequence[Operation]) -> List[Any]:
    """The replies of ``operations`` on ``client``: one sent directly, several in one pipeline."""
    if len(operations) == 1:
        operation = operations[0]
        if isinstance(operation, Command):
            return [client.execute_command(*operation.args)]
        return [operation.script(client, operation.keys, operation.args)]
    return run_pipeline(client, operations)


def run_pipeline(client: Any, calls: Sequence[Any]) -> list:
    """Run ``(script, keys, args)`` calls (or :class:`Command` s) in one round trip on ``client``.

    redis-py's own pipeline checks SCRIPT EXISTS before every execute, an extra
    round trip; we send EVALSHA directly and rerun only the calls that answered
    NOSCRIPT (they did not run, so nothing is repeated).
    """
    pipeline = client.pipeline(transaction=False)
    for call in calls:
        if isinstance(call, Command):
            pipeline.execute_command(*call.args)
        else:
            call[0].queue(pipeline, call[1], call[2])
    results = pipeline.execute(raise_on_error=False)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            client.script_load(script.source)
        pipeline = client.pipeline(transaction=False)
        for i in missing:
            script, keys, args = calls[i]
            script.queue(pipeline, keys, args)
        for i, result in zip(missing, pipeline.execute(raise_on_error=False)):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def load_script(package: str, name: str, hot: bool = False) -> LuaScript:
    """``<package>/lua/<name>.lua`` as a LuaScript; a missing file fails the import."""
    source = pkgutil.get_data(package, f"lua/{name}.lua")
    if source is None:  # pragma: no cover - only for exotic loaders
        raise ImportError(f"{package.replace('.', '/')}/lua/{name}.lua is missing from the package")
    return LuaScript(name, source, hot)


def _load(name: str, hot: bool = False) -> LuaScript:
    return load_script(__name__.rpartition(".")[0], name, hot)


SEND = _load("send", hot=True)
POP = _load("pop", hot=True)
TAKE_BODY = _load("take_body", hot=True)
GROUP_ADD = _load("group_add")
GROUP_MEMBERS = _load("group_members")
CHANNEL_STATS = _load("channel_stats")
