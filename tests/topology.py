"""A real Sentinel topology on loopback, for tests/test_sentinel.py.

For each service a master and a replica, plus three sentinels (quorum 2)
with a short ``down-after-milliseconds``, so a failover completes in a few
seconds. Every process is a tests.servers.RedisProcess we started and stop
by its own pid.
"""

from __future__ import annotations

import time
import warnings
from typing import Dict, List, Sequence, Tuple

import redis

from .servers import RedisProcess

Address = Tuple[str, int]


class SentinelTopology:
    def __init__(self, services: Sequence[str] = ("svc-a", "svc-b"), sentinel_count: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 4000):
        self.services = list(services)
        self.servers: Dict[int, RedisProcess] = {}  # port -> process, masters and replicas alike
        self.sentinels: List[RedisProcess] = []
        try:
            self._start(sentinel_count, down_after_ms, failover_timeout_ms)
        except BaseException:
            self.close()
            raise

    def _start(self, sentinel_count: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        monitor_lines = []
        for service in self.services:
            master = self._add_server([])
            replica = self._add_server([f"replicaof 127.0.0.1 {master.port}"])
            # a sentinel lists replicas from its first INFO of the master; a
            # replica that attached later would show up only 10 s after
            _wait_for(lambda r=replica: _link_up(r), 15, f"replica of {service} to sync")
            monitor_lines += [
                f"sentinel monitor {service} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {service} {down_after_ms}",
                f"sentinel failover-timeout {service} {failover_timeout_ms}",
                f"sentinel parallel-syncs {service} 1",
            ]
        for _ in range(sentinel_count):
            self.sentinels.append(RedisProcess(sentinel=True, extra_config=monitor_lines))
        self.wait_healthy()

    def _add_server(self, extra_config: List[str]) -> RedisProcess:
        server = RedisProcess(extra_config=extra_config)
        self.servers[server.port] = server
        return server

    @property
    def sentinel_addresses(self) -> List[Address]:
        return [sentinel.address for sentinel in self.sentinels]

    def master_address(self, service: str) -> Address:
        """The master as the first answering sentinel sees it."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1)
            try:
                host, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", service)
                return _text(host), int(port)
            except redis.ConnectionError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answered")

    def master(self, service: str) -> RedisProcess:
        return self.servers[self.master_address(service)[1]]

    def replica(self, service: str) -> RedisProcess:
        master = self.master(service)
        for server in self.servers.values():
            if server.process.poll() is None and _replica_of(server) == master.port:
                return server
        raise RuntimeError(f"{service} has no live replica")

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every sentinel knows the others, a master that is up and a synced
        replica for every service: only then can they agree on a failover."""
        _wait_for(self._healthy, timeout, "the sentinel topology to settle")

    def _healthy(self) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1)
            try:
                masters = client.execute_command("SENTINEL MASTERS")
                for service in self.services:
                    state = masters.get(service)
                    if not state or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                        return False
                    if state["num-other-sentinels"] < len(self.sentinels) - 1:
                        return False
                    replicas = client.execute_command("SENTINEL SLAVES", service)
                    if not any(r["is_slave"] and not r["is_sdown"] and r.get("master-link-status") == "ok"
                               for r in replicas):
                        return False
            except redis.ConnectionError:
                return False
            finally:
                client.close()
        return True

    def wait_promoted(self, service: str, old: Address, timeout: float = 30) -> Address:
        """Until every sentinel names a new master that says it is one."""

        def promoted() -> bool:
            addresses = set()
            for sentinel in self.sentinels:
                client = sentinel.client(socket_timeout=1)
                try:
                    host, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", service)
                    addresses.add((_text(host), int(port)))
                except redis.ConnectionError:
                    return False
                finally:
                    client.close()
            if len(addresses) != 1 or old in addresses:
                return False
            return _role(self.servers[next(iter(addresses))[1]]) == "master"

        _wait_for(promoted, timeout, f"a new master for {service}")
        return self.master_address(service)

    def manual_failover(self, service: str, timeout: float = 15) -> None:
        """SENTINEL FAILOVER, repeated while a sentinel still says it cannot
        (no replica it trusts yet, or a failover in progress)."""
        deadline = time.monotonic() + timeout
        while True:
            client = self.sentinels[0].client(socket_timeout=5)
            try:
                client.execute_command("SENTINEL", "FAILOVER", service)
                return
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            finally:
                client.close()

    def revive_as_replica(self, server: RedisProcess, master: Address) -> None:
        """Restart a killed server as a replica of the new master, so the
        service can fail over again."""
        server.extra_config = [f"replicaof {master[0]} {master[1]}"]
        server.start()
        # A full resync on a loaded 2-core machine can take a while (once, on
        # Valkey 8.1 under CI load, longer than 45 s). The test that killed it has
        # made its assertions by now; a later test needing this replica waits in
        # wait_healthy, so a slow resync is only reported here.
        try:
            _wait_for(lambda: _link_up(server), 45, "the revived server to sync")
        except RuntimeError as slow:
            warnings.warn(f"{slow}; later tests wait for the topology to heal", stacklevel=2)

    def close(self) -> None:
        for process in self.sentinels + list(self.servers.values()):
            process.close()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _info(server: RedisProcess) -> dict:
    client = server.client(socket_timeout=1)
    try:
        return client.info("replication")
    finally:
        client.close()


def _role(server: RedisProcess) -> str:
    try:
        return _info(server)["role"]
    except redis.ConnectionError:
        return "down"


def _replica_of(server: RedisProcess) -> int:
    try:
        info = _info(server)
    except redis.ConnectionError:
        return 0
    return int(info.get("master_port", 0)) if info["role"] == "slave" else 0


def _link_up(server: RedisProcess) -> bool:
    try:
        return _info(server).get("master_link_status") == "up"
    except redis.ConnectionError:
        return False


def _wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
