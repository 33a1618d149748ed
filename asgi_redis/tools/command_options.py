"""Where the command-line tools find their layer: --url/--prefix, or a Django
settings module's CHANNEL_LAYERS, read exactly as Channels 1.x reads it.

The settings module is imported directly (Django need not be installed, and
nothing in it is configured or started), from the current directory as
``manage.py`` would, so ``--settings myproject.settings`` works in an
existing project unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple, Type

from ..core import RedisChannelLayer

USAGE_ERROR = 2
RUNTIME_ERROR = 1

# The tools should fail in seconds on an unreachable Redis, not hang; a
# configuration that sets its own timeouts keeps them.
_CLI_CONNECTION_DEFAULTS = {"socket_connect_timeout": 3, "socket_timeout": 10}


class CommandError(Exception):
    """A failure to report in one line, with the exit status to leave with."""

    def __init__(self, message: str, status: int = RUNTIME_ERROR):
        super().__init__(message)
        self.status = status


def add_layer_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which layer")
    group.add_argument(
        "--url", dest="urls", action="append", metavar="URL",
        help="redis://, rediss:// or unix:// URL of a Redis server; repeat it for shards, "
             "in the order the layer was configured with; for a Redis Cluster, one node's URL "
             "is enough (cluster mode is detected, the other nodes discovered)",
    )
    group.add_argument("--prefix", help="key prefix of the layer (default 'asgi:' or the settings' one)")
    group.add_argument("--stats-prefix", help="prefix of statistics keys (default 'asgi-meta:')")
    group.add_argument(
        "--settings", metavar="MODULE",
        help="Django settings module (e.g. myproject.settings) whose CHANNEL_LAYERS to read; "
             "imported from the current directory as manage.py would",
    )
    group.add_argument("--alias", default="default", help="CHANNEL_LAYERS alias (default: %(default)s)")
    group.add_argument("--layout", help="key layout of the layer: classic (1.4.3's, the default) or compact")


def layer_config(args: argparse.Namespace) -> Tuple[Type[RedisChannelLayer], Dict[str, Any]]:
    """The layer class and constructor keywords the options describe."""
    if args.settings:
        backend, config = load_channel_layer(args.settings, args.alias)
    else:
        backend, config = RedisChannelLayer, {}
        if args.urls and _is_cluster_node(args.urls[0]):
            # --url of a cluster node: the other nodes are discovered from it
            from ..cluster.layer import RedisClusterChannelLayer
            backend = RedisClusterChannelLayer
    if args.urls:
        config["hosts"] = list(args.urls)
    if args.prefix is not None:
        config["prefix"] = args.prefix
    if getattr(args, "stats_prefix", None) is not None:
        config["stats_prefix"] = args.stats_prefix
    if getattr(args, "layout", None) is not None:
        config["layout"] = args.layout
    return backend, config


def _is_cluster_node(url: str) -> bool:
    from ..cluster.nodes import cluster_enabled

    try:
        return bool(cluster_enabled(url, _CLI_CONNECTION_DEFAULTS))
    except ValueError:  # not a URL redis-py reads: the layer reports it
        return False


def has_location(args: argparse.Namespace) -> bool:
    """Whether the options name a Redis (else the demo and bench start their own)."""
    return bool(args.urls or args.settings)


def build_layer(backend: Type[RedisChannelLayer], config: Dict[str, Any],
                overrides: Optional[Dict[str, Any]] = None) -> RedisChannelLayer:
    config = finish_config(config, overrides)
    try:
        return backend(**config)
    except (TypeError, ValueError) as error:
        raise CommandError(f"bad layer configuration: {error}", USAGE_ERROR) from None
    except ImportError as error:
        raise CommandError(str(error), RUNTIME_ERROR) from None


def finish_config(config: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``config`` with ``overrides`` and the tools' connection timeouts (unless it sets its own)."""
    config = {**config, **(overrides or {})}
    kwargs = config.get("connection_kwargs") or {}
    if isinstance(kwargs, dict):
        config["connection_kwargs"] = {**_CLI_CONNECTION_DEFAULTS, **kwargs}
    return config


def layer_from_args(args: argparse.Namespace,
                    overrides: Optional[Dict[str, Any]] = None) -> RedisChannelLayer:
    backend, config = layer_config(args)
    return build_layer(backend, config, overrides)


def load_channel_layer(module_name: str, alias: str) -> Tuple[Type[RedisChannelLayer], Dict[str, Any]]:
    """BACKEND class and a copy of CONFIG of ``CHANNEL_LAYERS[alias]`` in a settings module."""
    module = _import_settings(module_name)
    layers = getattr(module, "CHANNEL_LAYERS", None)
    if not isinstance(layers, dict):
        raise CommandError(f"settings module {module_name!r} has no CHANNEL_LAYERS dict", USAGE_ERROR)
    if alias not in layers:
        known = ", ".join(repr(name) for name in layers) or "none"
        raise CommandError(f"CHANNEL_LAYERS has no alias {alias!r} (it has: {known})", USAGE_ERROR)
    entry = layers[alias]
    if not isinstance(entry, dict) or "BACKEND" not in entry:
        raise CommandError(f"CHANNEL_LAYERS[{alias!r}] has no BACKEND", USAGE_ERROR)
    backend = _import_backend(entry["BACKEND"], alias)
    config = entry.get("CONFIG") or {}
    if not isinstance(config, dict):
        raise CommandError(
            f"CHANNEL_LAYERS[{alias!r}]['CONFIG'] must be a dict, not {config!r:.60}", USAGE_ERROR
        )
    return backend, dict(config)


def _import_settings(module_name: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    # settings modules sometimes look this up themselves (django-environ, split settings)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", module_name)
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if error.name and module_name.startswith(error.name):
            raise CommandError(
                f"cannot import settings module {module_name!r} (run from the project directory, "
                f"or set PYTHONPATH): {error}", USAGE_ERROR,
            ) from None
        raise CommandError(f"settings module {module_name!r} failed to import: {error}") from None
    except Exception as error:
        raise CommandError(
            f"settings module {module_name!r} failed to import: {type(error).__name__}: {error}"
        ) from None


def _import_backend(path: Any, alias: str) -> Type[RedisChannelLayer]:
    if not isinstance(path, str) or "." not in path:
        raise CommandError(
            f"CHANNEL_LAYERS[{alias!r}]['BACKEND'] is not a dotted path: {path!r}", USAGE_ERROR
        )
    module_name, _, name = path.rpartition(".")
    try:
        backend = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise CommandError(f"cannot import BACKEND {path!r}: {error}", USAGE_ERROR) from None
    if not (isinstance(backend, type) and issubclass(backend, RedisChannelLayer)):
        raise CommandError(
            f"BACKEND {path!r} of alias {alias!r} is not an asgi_redis layer; "
            "these tools only read asgi_redis layers", USAGE_ERROR,
        )
    return backend


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2) instead of
    the usage block followed by the message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(prog: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning every expected failure into one line and an exit status."""
    import redis

    from ..errors import LayerConnectionError
    from .embedded import NoRedisServer

    try:
        return command(args)
    except CommandError as error:
        return _fail(prog, str(error), error.status)
    except (LayerConnectionError, redis.ConnectionError, redis.TimeoutError) as error:
        return _fail(prog, f"cannot reach Redis: {_one_line(error)}", RUNTIME_ERROR)
    except redis.RedisError as error:
        return _fail(prog, f"Redis answered with an error: {_one_line(error)}", RUNTIME_ERROR)
    except NoRedisServer as error:
        return _fail(prog, str(error), RUNTIME_ERROR)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except BrokenPipeError:
        # stdout closed early (piped into head): not an error worth a traceback
        sys.stderr.close()
        return RUNTIME_ERROR


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: error: {_one_line(Exception(message))}", file=sys.stderr)
    return status


def positive_int(text: str) -> int:
    """argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value
