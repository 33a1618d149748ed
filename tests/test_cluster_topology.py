"""RedisClusterChannelLayer while the cluster changes under traffic: a master
SIGKILLed (failover to its replica) and a live slot migration (resharding).

A sender and a blocked receiver run throughout. The tests fail when a message
is delivered twice, or when a send the layer acknowledged is never received
(after the promotion, for the failover: Redis replication is asynchronous, so
a send acknowledged in the instant before the crash may be gone; the count of
those is printed). The figures (unavailability, failed calls, redirections)
are printed for the README."""

from __future__ import annotations

import threading
import time
from collections import Counter

from asgi_redis import ChannelLayerError, LayerConnectionError, RedisClusterChannelLayer
from asgi_redis.cluster import key_slot

from .cluster import RedisCluster


class Traffic:
    """A sender thread and a blocking receiver thread on their own layers."""

    def __init__(self, make, channels_to_send, receive_on, group=None, pause=0.002):
        self.sender, self.receiver = make(), make()
        self.channels, self.receive_on, self.group, self.pause = channels_to_send, receive_on, group, pause
        self.acked = []  # (channel or group, number, time acknowledged)
        self.send_failures = []  # (time, seconds the call took, error)
        self.failed_targets = []  # the channel or group of each failed send
        self.received = []  # (channel, number)
        self.receive_failures = []
        self.stop_sending = threading.Event()
        self.stop_receiving = threading.Event()
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._receive)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def _send(self):
        number = 0
        while not self.stop_sending.is_set():
            number += 1
            for target in self.channels + ([self.group] if self.group else []):
                started = time.monotonic()
                try:
                    if target == self.group:
                        self.sender.send_group(target, {"n": number})
                    else:
                        self.sender.send(target, {"n": number})
                except Exception as error:  # anything but ChannelLayerError fails the test below
                    self.send_failures.append((started, time.monotonic() - started, error))
                    self.failed_targets.append(target)
                    continue
                self.acked.append((target, number, time.monotonic()))
            time.sleep(self.pause)

    def _receive(self):
        while not self.stop_receiving.is_set():
            try:
                channel, message = self.receiver.receive(self.receive_on, block=True)
            except Exception as error:  # anything but ChannelLayerError fails the test below
                self.receive_failures.append((time.monotonic(), error))
                time.sleep(0.01)
                continue
            if channel is not None:
                self.received.append((channel, message["n"]))

    def finish(self, quiet_for=1.5):
        self.stop_sending.set()
        self.threads[0].join(30)
        last = len(self.received)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the receiver has been idle a while
            time.sleep(quiet_for)
            if len(self.received) == last:
                break
            last = len(self.received)
        self.stop_receiving.set()
        self.threads[1].join(30)
        self.sender.close()
        self.receiver.close()

    def duplicates(self):
        return [item for item, count in Counter(self.received).items() if count > 1]


def _name_on(nodes, layer, master, pattern):
    """A name from ``pattern`` whose queue lives on ``master``."""
    for number in range(10000):
        name = pattern.format(number)
        if nodes.master_of_slot(key_slot(layer.layout.queue_key(name))) is master:
            return name
    raise AssertionError("no name found")


def test_failover_under_traffic_no_duplicate_no_acknowledged_loss():
    nodes = RedisCluster(masters=3, replicas=1, node_timeout_ms=1000)
    made = []

    def make():
        made.append(RedisClusterChannelLayer(
            hosts=[nodes.url], expiry=60,
            connection_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 0.5}))
        return made[-1]

    try:
        probe = make()
        victim = nodes.masters()[1]
        process = _name_on(nodes, probe, victim, "fail{}!")
        normal = _name_on(nodes, probe, victim, "failnormal{}")
        elsewhere = _name_on(nodes, probe, nodes.masters()[0], "failother{}!")  # a master that stays up
        traffic = Traffic(make, [process + "r", normal, elsewhere + "r"], [process, normal, elsewhere])
        traffic.start()
        time.sleep(0.5)
        before_kill = len(traffic.acked)
        nodes.kill_master(victim)
        killed = time.monotonic()
        nodes.wait_promotion(victim)
        promoted = time.monotonic()
        time.sleep(1.5)
        traffic.finish()

        assert before_kill > 10 and traffic.send_failures  # traffic ran, and the crash showed
        assert not traffic.duplicates(), traffic.duplicates()[:10]
        received = set(traffic.received)
        after = [(target, n) for target, n, at in traffic.acked if at > promoted]
        assert after and not [item for item in after if item not in received]
        lost_before = [(t, n) for t, n, at in traffic.acked if at <= killed and (t, n) not in received]
        failed = [seconds for _, seconds, _ in traffic.send_failures]
        assert max(failed) < 1.0 + 0.5 + 1.0  # never past socket_timeout (+ connect timeout)
        assert all(isinstance(error, LayerConnectionError) for _, _, error in traffic.send_failures)
        assert all(isinstance(error, LayerConnectionError) for _, error in traffic.receive_failures)
        # the masters that stay up answer CLUSTERDOWN while a slot has no master (full coverage)
        down = [error for _, _, error in traffic.send_failures if "CLUSTERDOWN" in str(error)]
        first_failure = min(at for at, _, _ in traffic.send_failures)
        # unavailable: from the first failed send to the first acknowledged one after it, on the dead
        # master's channels (sends to a master that stays up may go on in between)
        first_success_after = min(at for target, _, at in traffic.acked
                                  if at > first_failure and target in (process + "r", normal))
        others_failed = traffic.failed_targets.count(elsewhere + "r")
        print(f"\nfailover ({nodes.version()}): sends failed for {first_success_after - first_failure:.2f} s "
              f"({len(traffic.send_failures)} calls, slowest {max(failed) * 1000:.0f} ms); promotion "
              f"{promoted - killed:.2f} s after the kill; receive failures {len(traffic.receive_failures)}; "
              f"{len(traffic.acked)} sends acknowledged, {len(traffic.received)} received, "
              f"{len(lost_before)} acknowledged before the crash lost, 0 duplicates; "
              f"{len(down)} calls answered CLUSTERDOWN; {others_failed} sends to a master that stayed up failed")
    finally:
        for layer in made:
            layer.close()
        nodes.close()


def test_live_resharding_of_a_busy_process_channel_and_its_group():
    nodes = RedisCluster(masters=3, replicas=1, node_timeout_ms=3000)
    made = []

    def make():
        made.append(RedisClusterChannelLayer(hosts=[nodes.url], expiry=60, group_expiry=600))
        return made[-1]

    try:
        probe = make()
        process = "busy!"
        slot = key_slot(probe.layout.queue_key(process))
        group = next(f"grp{n}" for n in range(100000) if key_slot(probe.layout.group_key(f"grp{n}")) == slot)
        for member in ("a", "b"):
            probe.group_add(group, process + member)
        source = nodes.master_of_slot(slot)
        target = next(node for node in nodes.masters() if node is not source)
        traffic = Traffic(make, [process + "s"], [process], group=group, pause=0.001)
        traffic.start()
        time.sleep(0.4)
        nodes.begin_migration(slot, target)
        moved = 0
        with source.client() as client:
            while True:  # one key at a time, with pauses: a long window of ASK and TRYAGAIN
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
                if not keys:
                    break
                client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += 1
                time.sleep(0.1)
        nodes.finish_migration(slot, source, target)
        time.sleep(1.0)
        traffic.finish()

        assert moved >= 2 and len(traffic.acked) > 50
        assert not traffic.duplicates(), traffic.duplicates()[:10]
        expected = []
        for target_name, number, _ in traffic.acked:
            members = [process + "a", process + "b"] if target_name == group else [target_name]
            expected += [(member, number) for member in members]
        received = set(traffic.received)
        missing = [item for item in expected if item not in received]
        assert not missing, missing[:10]
        failures = traffic.send_failures + [(at, 0, error) for at, error in traffic.receive_failures]
        assert len(failures) <= 10
        assert all(isinstance(error, ChannelLayerError) for _, _, error in failures)
        redirects = traffic.sender.router.redirects + traffic.receiver.router.redirects
        assert redirects["MOVED"] + redirects["ASK"] >= 1
        assert nodes.master_of_slot(slot) is target
        print(f"\nresharding ({nodes.version()}): {moved} keys migrated one by one; {len(traffic.acked)} sends "
              f"acknowledged, {len(traffic.received)} deliveries, 0 duplicates, 0 lost; failed calls: "
              f"{len(traffic.send_failures)} send, {len(traffic.receive_failures)} receive; "
              f"redirections followed: {dict(redirects)}")
    finally:
        for layer in made:
            layer.close()
        nodes.close()


def test_a_node_added_then_removed_is_followed_without_restart():
    nodes = RedisCluster(masters=3, replicas=0, node_timeout_ms=3000)
    layer = RedisClusterChannelLayer(hosts=[nodes.url], expiry=60)
    try:
        slot = key_slot(layer.layout.queue_key("grow!"))
        home = nodes.master_of_slot(slot)
        for number in range(3):
            layer.send("grow!x", {"n": number})
        added = nodes.add_master()
        nodes.migrate_slot(slot, added)
        generation = layer.router.generation
        layer.send("grow!x", {"n": 3})  # MOVED: the map is read again, the new node found
        assert layer.router.generation == generation + 1
        assert nodes.address(added) in layer.router.masters()
        assert [layer.receive(["grow!"])[1]["n"] for _ in range(4)] == [0, 1, 2, 3]
        nodes.migrate_slot(slot, home)
        nodes.remove_node(added)
        layer.send("grow!x", {"n": 4})
        assert layer.receive(["grow!"]) == ("grow!x", {"n": 4})
        assert nodes.address(added) not in layer.router.masters() and len(layer.router.masters()) == 3
    finally:
        layer.close()
        nodes.close()


def test_a_master_cut_off_times_out_clearly_then_its_replica_serves():
    """SIGSTOP a master (as a partition would cut it off): calls to it time out within
    socket_timeout with LayerConnectionError, its replica is promoted, calls go there;
    resumed, the old master is a replica and the layer never goes back to it."""
    nodes = RedisCluster(masters=3, replicas=1, node_timeout_ms=1000)
    made = []

    def make():
        made.append(RedisClusterChannelLayer(
            hosts=[nodes.url], expiry=60, connection_kwargs={"socket_timeout": 0.5, "socket_connect_timeout": 0.5}))
        return made[-1]

    try:
        probe = make()
        victim = nodes.masters()[2]
        process = _name_on(nodes, probe, victim, "cut{}!")
        traffic = Traffic(make, [process + "r"], [process], pause=0.005)
        traffic.start()
        time.sleep(0.5)
        nodes.pause(victim)
        nodes.wait_promotion(victim)
        promoted = time.monotonic()
        time.sleep(0.5)
        nodes.resume(victim)
        time.sleep(1.0)
        traffic.finish()
        assert traffic.send_failures, "the cut-off master was noticed"
        assert all(isinstance(error, LayerConnectionError) for _, _, error in traffic.send_failures)
        assert all(isinstance(error, LayerConnectionError) for _, error in traffic.receive_failures)
        # bounded by the timeouts: a read, or a connect tried twice (the policy's one retry), plus slack
        assert max(seconds for _, seconds, _ in traffic.send_failures) < 0.5 + 2 * 0.5 + 0.1 + 1.0
        assert any("did not answer in time" in str(error) for _, _, error in traffic.send_failures)
        assert not traffic.duplicates(), traffic.duplicates()[:10]
        received = set(traffic.received)
        after = [(target, n) for target, n, at in traffic.acked if at > promoted]
        assert after and not [item for item in after if item not in received]
        assert not nodes.is_master(victim)
        print(f"\ncut-off master ({nodes.version()}): {len(traffic.send_failures)} sends failed "
              f"(slowest {max(s for _, s, _ in traffic.send_failures) * 1000:.0f} ms), "
              f"{len(traffic.receive_failures)} receives; {len(traffic.acked)} acknowledged, 0 duplicates")
    finally:
        for layer in made:
            layer.close()
        nodes.close()


def _wait_blocked(node, count, timeout=10.0):
    """Until ``node`` has ``count`` clients blocked (in BLPOP)."""
    deadline = time.monotonic() + timeout
    with node.client() as client:
        while int(client.info("clients")["blocked_clients"]) < count:
            assert time.monotonic() < deadline, "the receivers never blocked"
            time.sleep(0.02)


def _send_until_acknowledged(layer, channel, give_up_after=30.0):
    """Send until one send is acknowledged (calls fail while the slot has no master);
    returns the number sent and when it was acknowledged."""
    deadline = time.monotonic() + give_up_after
    number = 0
    while True:
        number += 1
        try:
            layer.send(channel, {"n": number})
            return number, time.monotonic()
        except LayerConnectionError:
            assert time.monotonic() < deadline, "no send acknowledged after the promotion"
            time.sleep(0.05)


def test_a_blocked_receive_goes_on_with_the_promoted_replica():
    """Receives blocked on the slot of a master that is SIGKILLed do not fail: each
    waits on through the failover and is woken by a send made after the promotion,
    within the same call (one on a ``!`` channel alone, one over two masters)."""
    nodes = RedisCluster(masters=3, replicas=1, node_timeout_ms=1000)
    made = []

    def make():
        made.append(RedisClusterChannelLayer(
            hosts=[nodes.url], expiry=60, connection_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 0.5}))
        made[-1].blpop_timeout = 20  # long enough for the promotion (2-3 s here)
        return made[-1]

    try:
        sender = make()
        victim, other = nodes.masters()[1], nodes.masters()[0]
        alone = _name_on(nodes, sender, victim, "alone{}!")
        spread = _name_on(nodes, sender, victim, "spread{}!")
        elsewhere = _name_on(nodes, sender, other, "elsewhere{}!")
        outcomes = {}

        def receive(name, channels):
            layer = make()
            started = time.monotonic()
            try:
                outcomes[name] = layer.receive(channels, block=True)
            except Exception as error:  # what today's code did: LayerConnectionError at once
                outcomes[name] = error
            outcomes[name + " returned"] = time.monotonic()
            outcomes[name + " took"] = time.monotonic() - started

        threads = [threading.Thread(target=receive, args=("alone", [alone])),
                   threading.Thread(target=receive, args=("spread", [spread, elsewhere]))]
        for thread in threads:
            thread.start()
        _wait_blocked(victim, 2)
        nodes.kill_master(victim)
        killed = time.monotonic()
        nodes.wait_promotion(victim)
        promoted = time.monotonic()
        assert not outcomes, f"a blocked receive ended before any send: {outcomes}"
        sent_alone, acked_alone = _send_until_acknowledged(sender, alone + "x")
        sent_spread, acked_spread = _send_until_acknowledged(sender, spread + "y")
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        # the number may be >1 when an earlier attempt failed after it was written (it may
        # have been queued: at most once lets it be either); the first queued is received
        assert outcomes["alone"][0] == alone + "x", outcomes
        assert 1 <= outcomes["alone"][1]["n"] <= sent_alone
        assert outcomes["spread"][0] == spread + "y", outcomes
        assert 1 <= outcomes["spread"][1]["n"] <= sent_spread
        print(f"\nblocked receive through a failover ({nodes.version()}): promotion {promoted - killed:.2f} s "
              f"after the kill; the blocked receive on one slot returned the first send acknowledged after "
              f"it ({acked_alone - killed:.2f} s after the kill) {outcomes['alone returned'] - killed:.2f} s "
              f"after the kill (the call took {outcomes['alone took']:.2f} s); the one over two masters "
              f"{outcomes['spread returned'] - killed:.2f} s after the kill (its send acknowledged at "
              f"{acked_spread - killed:.2f} s)")
    finally:
        for layer in made:
            layer.close()
        nodes.close()
