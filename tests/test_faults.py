"""Faults the layer must survive without a restart and without a duplicate.

Every test here runs against redis-server processes of its own (restarted,
paused, killed, filled up), never the shared session server. Figures are
printed (run with ``-s`` to see them); bounds are generous because the test
machine is small and shared.
"""

from __future__ import annotations

import collections
import itertools
import re
import socket
import subprocess
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from asgi_redis import ChannelFull, ChannelLayerError, LayerConnectionError, RedisChannelLayer, scripts
from asgi_redis import retry as retry_policy

from .helpers import built_layers
from .servers import RedisProcess, redis_server_binary, serving

TIMEOUTS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
RECOVERY_BOUND = 15.0  # seconds; the real figure is printed and is far lower


def debug_command_config():
    """Redis 7 refuses DEBUG unless told; 6.x does not know the directive."""
    version = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True).stdout
    major = int(re.search(r"v=(\d+)", version).group(1))
    return ["enable-debug-command local"] if major >= 7 else []


@pytest.fixture
def server():
    yield from serving(extra_config=debug_command_config())


@pytest.fixture
def layout_name():
    """The key layout of the layers ``build`` makes; tests that hold for both parametrize it."""
    return "classic"


BOTH_LAYOUTS = pytest.mark.parametrize("layout_name", ["classic", "compact"])


@pytest.fixture
def build(server, layout_name):
    """Layers on this test's own server (or ``hosts``), closed after it. Never
    flushed: some talk through a proxy that drops replies, and the server dies with the test."""

    def make(hosts=None, **config):
        config = {"expiry": 30, "connection_kwargs": dict(TIMEOUTS), "layout": layout_name, **config}
        layer = RedisChannelLayer(hosts=hosts or [server.url], **config)
        layer.blpop_timeout = 0.5  # so threads notice the end of a test quickly
        return layer

    yield from built_layers(make, flush_first=False, flush_after=False)


def wait_until(condition, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def drain(layer, channels, limit=100000):
    found = []
    for _ in range(limit):
        channel, message = layer.receive(channels)
        if channel is None:
            return found
        found.append((channel, message))
    raise AssertionError("drain did not end")


def queue_without_bodies(client, prefix="asgi:"):
    """Queue entries whose body key is missing, and bodies no queue points at."""
    queued, bodies = set(), set()
    for key in client.scan_iter(match=prefix + "*"):
        if client.type(key) == b"list":
            queued.update(client.lrange(key, 0, -1))
        elif client.type(key) == b"string":
            bodies.add(key)
    return queued - bodies, bodies - queued


# -- the retry policy, through a proxy that loses replies ---------------------


class LossyProxy:
    """A TCP proxy to Redis that can let one command through and then cut the
    connection before its reply comes back: the server ran the command, the
    client never hears of it, as on a network failure."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.armed = None  # bytes: cut the reply to the next command containing them
        self.cut = 0
        self.reject_next = 0  # hang up on this many new connections at once
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            if self.reject_next:
                self.reject_next -= 1
                downstream.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [downstream, upstream]
            doomed = threading.Event()
            for pair in ((downstream, upstream, doomed, True), (upstream, downstream, doomed, False)):
                threading.Thread(target=self._pump, args=pair, daemon=True).start()

    def _pump(self, source, target, doomed, from_client):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client and self.armed is not None and self.armed in data:
                    self.armed = None
                    doomed.set()
                elif not from_client and doomed.is_set():
                    self.cut += 1
                    break  # swallow the reply and hang up on both sides
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def proxy(server):
    lossy = LossyProxy(server.port)
    yield lossy
    lossy.close()


@BOTH_LAYOUTS
def test_send_whose_reply_was_lost_is_not_repeated(build, proxy, server):
    layer = build(hosts=[proxy.url])
    layer.send("warm", {"n": 0})  # loads the script, so the cut hits the real send
    proxy.armed = layer.layout.send_calls([("warm", [b""])])[0].script.sha.encode()
    with pytest.raises(LayerConnectionError):
        layer.send("lost-reply", {"n": 1})
    assert proxy.cut == 1
    # the server did queue it once; the layer must not have queued it again
    assert server.client().llen(layer.layout.queue_key("lost-reply")) == 1
    assert layer.receive(["lost-reply"]) == ("lost-reply", {"n": 1})
    assert layer.receive(["lost-reply"]) == (None, None)


def test_blind_retry_would_duplicate(build, proxy, server):
    """The counter-test: redis-py's own retry (what the policy replaces) queues twice."""
    layer = build(hosts=[proxy.url], connection_kwargs={**TIMEOUTS, "retry": Retry(NoBackoff(), 1)})
    layer.send("warm", {"n": 0})
    proxy.armed = scripts.SEND.sha.encode()
    layer.send("blind", {"n": 1})
    assert server.client().llen("asgi:blind") == 2


@BOTH_LAYOUTS
def test_pop_whose_reply_was_lost_is_not_repeated(build, proxy, server):
    layer = build(hosts=[proxy.url])
    layer.receive(["popped"])  # loads the script, so the cut hits the real pop
    for n in range(3):
        layer.send("popped", {"n": n})
    pop = layer.layout.pop_call([b"popped"]).script
    proxy.armed = pop.sha.encode() if hasattr(pop, "sha") else b"LPOP"  # compact pops without a script
    with pytest.raises(LayerConnectionError):
        layer.receive(["popped"])
    # message 0 was popped by the server and its reply lost: it is gone (at
    # most once); a repeat would have taken message 1 and lost it as well
    assert [m["n"] for _, m in drain(layer, ["popped"])] == [1, 2]


def test_read_whose_reply_was_lost_is_retried(build, proxy):
    layer = build(hosts=[proxy.url])
    layer.send("counted", {"n": 1})
    proxy.armed = b"MGET"
    assert layer.global_statistics()["messages_count"] == 1
    assert proxy.cut == 1
    proxy.armed = scripts.GROUP_ADD.sha.encode()
    layer.group_add("readers", "counted")
    assert proxy.cut == 2
    assert layer.group_channels("readers") == ["counted"]


def test_failed_health_check_before_a_send_is_retried(build, proxy, server):
    """With health_check_interval, a PING precedes a command on an idle connection;
    if that PING fails, the send itself was not written yet and goes through."""
    layer = build(hosts=[proxy.url], connection_kwargs={**TIMEOUTS, "health_check_interval": 0.05})
    layer.send("checked", {"n": 0})
    time.sleep(0.1)  # idle longer than the interval: the next command pings first
    proxy.armed = b"PING"
    layer.send("checked", {"n": 1})
    assert proxy.cut == 1
    assert [m["n"] for _, m in drain(layer, ["checked"])] == [0, 1]


def test_connection_dropped_while_connecting_is_retried(build, proxy, server):
    layer = build(hosts=[proxy.url])
    proxy.reject_next = 1  # TCP accepted, then closed before the handshake answers
    layer.send("connecting", {"n": 1})
    assert proxy.reject_next == 0
    proxy.reject_next = 2  # a second failure in a row is the caller's to see
    layer.close()
    with pytest.raises(LayerConnectionError):
        layer.send("connecting", {"n": 2})
    assert [m["n"] for _, m in drain(layer, ["connecting"])] == [1]


def test_pipeline_whose_reply_was_lost_is_not_repeated_after_a_health_check(build, proxy, server):
    """The health-check PING must not stand in for the pipeline written after it."""
    layer = build(hosts=[proxy.url], connection_kwargs={**TIMEOUTS, "health_check_interval": 0.05})
    client = layer.shards.client(0)
    client.ping()
    time.sleep(0.1)  # idle past the interval: the pipeline's write is preceded by a PING
    proxy.armed = b"RPUSH"
    pipeline = client.pipeline(transaction=False)
    pipeline.rpush("asgi:piped", "a")
    pipeline.rpush("asgi:piped", "b")
    with pytest.raises(redis.ConnectionError):
        pipeline.execute()
    assert proxy.cut == 1
    assert server.client().lrange("asgi:piped", 0, -1) == [b"a", b"b"]


def test_policy_decisions():
    connect_error = redis.ConnectionError("Error 111 connecting")
    connect_error._asgi_redis_nothing_sent = True
    assert retry_policy.may_retry(connect_error)
    timeout = redis.TimeoutError("Timeout connecting to server")
    timeout._asgi_redis_nothing_sent = True
    assert not retry_policy.may_retry(timeout)
    auth = redis.AuthenticationError("invalid password")
    auth._asgi_redis_nothing_sent = True
    assert not retry_policy.may_retry(auth)
    for command, safe in [
        (("EVALSHA", scripts.SEND.sha, 6), False),
        (("EVALSHA", scripts.POP.sha, 1), False),
        (("EVALSHA", scripts.TAKE_BODY.sha, 1), False),
        (("BLPOP", "asgi:a", 1), False),
        (("EVALSHA", scripts.CHANNEL_STATS.sha, 3), True),
        (("MGET", "a", "b"), True),
        (("EXISTS", "a"), True),
    ]:
        error = redis.ConnectionError("Connection closed by server.")
        error._asgi_redis_command = command
        assert retry_policy.may_retry(error) is safe, command
    assert not retry_policy.may_retry(redis.ConnectionError("unmarked"))


# -- restarts -------------------------------------------------------------------


def test_first_call_after_restart_succeeds(build, server):
    layer = build()
    layer.group_add("g", "after?x")
    # several pooled connections, all left stale by the restart
    threads = [threading.Thread(target=layer.receive, args=(["idle"], True)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(layer.shards.client(0).connection_pool._available_connections) >= 3
    server.kill()
    server.start()
    started = time.monotonic()
    layer.send("after?x", {"n": 1})  # also reloads the script (NOSCRIPT)
    assert layer.receive(["after?x"]) == ("after?x", {"n": 1})
    layer.group_add("g", "after?x")
    layer.send_group("g", {"n": 2})
    assert layer.receive(["after?x"], block=True) == ("after?x", {"n": 2})
    assert layer.channel_statistics("after?x")["messages_count"] == 2
    print(f"\nfirst calls after restart took {time.monotonic() - started:.3f} s")


@BOTH_LAYOUTS
def test_blocked_receivers_wake_when_redis_dies(build, server):
    layer = build()
    layer.blpop_timeout = 30  # only the failure can end these waits early
    outcomes = []

    def wait():
        started = time.monotonic()
        try:
            outcomes.append(layer.receive(["wake!", "wake?y"], block=True))
        except LayerConnectionError as error:
            outcomes.append(error)
        outcomes.append(time.monotonic() - started)

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let them reach BLPOP
    killed = time.monotonic()
    server.kill()
    for thread in threads:
        thread.join(10)
    woke = time.monotonic() - killed
    print(f"\nblocked receivers woke {woke:.3f} s after the kill")
    assert not any(thread.is_alive() for thread in threads)
    errors = [item for item in outcomes if isinstance(item, LayerConnectionError)]
    assert len(errors) == 3
    assert "unreachable" in str(errors[0]) and server.url.split("//")[1] in str(errors[0])
    server.start()
    layer.send("wake!a", {"n": 1})
    assert layer.receive(["wake!"], block=True) == ("wake!a", {"n": 1})


def run_traffic(layer, senders, receivers, during):
    """Sender and receiver threads that count every message by id while ``during()`` runs."""
    stop = threading.Event()
    record = {
        "sent": set(), "maybe_sent": set(), "full": 0, "errors": collections.Counter(),
        "received": [], "sent_at": {}, "received_at": collections.defaultdict(list), "last_ok": {},
    }
    lock = threading.Lock()

    def send(name, channel):
        for number in itertools.count():
            if stop.is_set():
                return
            identifier = f"{name}:{number}"
            started = time.monotonic()
            try:
                layer.send(channel, {"id": identifier, "n": number})
            except ChannelFull:
                with lock:
                    record["full"] += 1
                time.sleep(0.01)
                continue
            except LayerConnectionError:
                with lock:
                    record["maybe_sent"].add(identifier)
                    record["errors"][name] += 1
                time.sleep(0.02)
                continue
            with lock:
                record["sent"].add(identifier)
                record["sent_at"][identifier] = started
                record["last_ok"][name] = time.monotonic()
            time.sleep(0.001)

    def receive(name, channels):
        while not stop.is_set():
            try:
                channel, message = layer.receive(channels, block=True)
            except LayerConnectionError:
                with lock:
                    record["errors"][name] += 1
                time.sleep(0.02)
                continue
            with lock:
                record["last_ok"][name] = time.monotonic()
                if channel is not None:
                    record["received"].append((channel, message["id"], message["n"]))

    threads = [threading.Thread(target=send, args=item) for item in senders]
    threads += [threading.Thread(target=receive, args=item) for item in receivers]
    for thread in threads:
        thread.start()
    try:
        during(record)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not any(thread.is_alive() for thread in threads), "a traffic thread hung"
    return record


def check_delivery(record, leftovers):
    received = record["received"] + [(c, m["id"], m["n"]) for c, m in leftovers]
    ids = [identifier for _, identifier, _ in received]
    duplicates = [i for i, count in collections.Counter(ids).items() if count > 1]
    assert not duplicates, f"delivered twice: {duplicates[:10]}"
    unknown = set(ids) - record["sent"] - record["maybe_sent"]
    assert not unknown, f"received what was never sent: {sorted(unknown)[:10]}"
    # one writer, one reader on ? and !: order kept per sender
    last = {}
    for channel, identifier, number in received:
        if "?" in channel or "!" in channel:
            sender = identifier.split(":")[0]
            assert number > last.get(sender, -1), f"{sender} out of order on {channel}"
            last[sender] = number
    return set(ids)


@BOTH_LAYOUTS
def test_restart_during_traffic(build, server):
    layer = build()
    senders = [("plain", "work"), ("single", "reply?abc"), ("process", "proc!a")]
    receivers = [("r-work-1", ["work"]), ("r-work-2", ["work"]), ("r-directed", ["reply?abc", "proc!"])]
    figures = {}

    def outage(record):
        time.sleep(0.7)
        server.kill()
        figures["killed"] = time.monotonic()
        time.sleep(0.5)
        server.start()
        restarted = figures["restarted"] = time.monotonic()
        names = [name for name, _ in senders + receivers]
        recovered = wait_until(
            lambda: all(record["last_ok"].get(name, 0) > restarted for name in names), RECOVERY_BOUND
        )
        figures["recovered"] = time.monotonic() - restarted
        assert recovered, f"not every thread recovered: {record['last_ok']} (restart at {restarted})"
        figures["sent_before_stop"] = len(record["sent"])
        time.sleep(0.5)  # steady traffic again

    record = run_traffic(layer, senders, receivers, outage)
    leftovers = drain(layer, ["work", "reply?abc", "proc!"])
    delivered = check_delivery(record, leftovers)
    # Whatever was confirmed after the restart must all arrive: only the outage may lose.
    lost_before = record["sent"] - delivered
    print(
        f"\nrestart: recovered {figures['recovered']:.3f} s after restart; sent {len(record['sent'])}, "
        f"maybe-sent {len(record['maybe_sent'])}, received {len(delivered)}, "
        f"lost with the killed server {len(lost_before)}, errors {dict(record['errors'])}"
    )
    assert len(delivered) > 0
    confirmed_after = {i for i, at in record["sent_at"].items() if at > figures["restarted"]}
    assert confirmed_after and confirmed_after <= delivered, sorted(confirmed_after - delivered)[:10]
    used = [layer.layout.send_calls([("work", [b""])])[0].script, layer.layout.pop_call([b"work"]).script]
    shas = [script.sha for script in used if hasattr(script, "sha")]  # compact pops without a script
    assert layer.shards.client(0).script_exists(*shas) == [True] * len(shas)


@BOTH_LAYOUTS
def test_confirmed_sends_after_restart_are_never_lost(build, server):
    layer = build(capacity=1000)
    layer.send("steady?q", {"n": -1})
    server.kill()
    server.start()
    confirmed = []
    for n in range(200):
        layer.send("steady?q", {"n": n})
        confirmed.append(n)
    assert [m["n"] for _, m in drain(layer, ["steady?q"])] == confirmed


# -- lost scripts, killed connections, a Redis that stops answering -------------


def test_script_flush_is_transparent(build, server):
    layer = build()
    layer.group_add("flushed", "sf?a")
    layer.send("sf?a", {"n": 1})
    raw = server.client()
    raw.script_flush()
    layer.send("sf?a", {"n": 2})
    raw.script_flush()
    assert layer.receive(["sf?a"]) == ("sf?a", {"n": 1})
    raw.script_flush()
    layer.send_group("flushed", {"n": 3})
    raw.script_flush()
    assert layer.channel_statistics("sf?a")["messages_pending"] == 2
    raw.script_flush()
    assert [m["n"] for _, m in drain(layer, ["sf?a"])] == [2, 3]
    # the pipelined path (send_group with many members per shard)
    raw.script_flush()
    calls = [
        (scripts.GROUP_MEMBERS, ["asgi::group:flushed"], [0]),
        (scripts.CHANNEL_STATS, ["asgi:sf?a", "x", "y"], [30]),
    ]
    members, stats = scripts.run_pipeline(layer.shards.client(0), calls)
    assert members == [b"sf?a"] and stats[2] == 0


def kill_layer_connections(server):
    raw = server.client()
    killed = raw.client_kill_filter(_type="normal", skipme=True)
    raw.close()
    return killed


def test_client_kill_of_idle_connections(build, server):
    layer = build()
    layer.send("killed?a", {"n": 1})
    assert kill_layer_connections(server) >= 1
    # the pool notices the closed sockets before writing: no error at all
    layer.send("killed?a", {"n": 2})
    assert kill_layer_connections(server) >= 1
    assert [m["n"] for _, m in drain(layer, ["killed?a"])] == [1, 2]


@BOTH_LAYOUTS
def test_client_kill_during_blocking_receive(build, server):
    layer = build()
    layer.blpop_timeout = 30
    outcome = []

    def wait():
        try:
            outcome.append(layer.receive(["blocked?a"], block=True))
        except LayerConnectionError as error:
            outcome.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    assert wait_until(lambda: server.client().info("clients")["blocked_clients"] == 1, 10)
    started = time.monotonic()
    kill_layer_connections(server)
    thread.join(10)
    print(f"\nreceiver blocked in BLPOP failed {time.monotonic() - started:.3f} s after CLIENT KILL")
    assert isinstance(outcome[0], LayerConnectionError), outcome
    layer.send("blocked?a", {"n": 1})
    assert layer.receive(["blocked?a"], block=True) == ("blocked?a", {"n": 1})


def paused(server, milliseconds, how):
    """Stop the server answering for a while, from a thread of our own."""
    raw = server.client(socket_timeout=30)
    if how == "pause":
        raw.execute_command("CLIENT", "PAUSE", milliseconds)
        raw.close()
        return time.monotonic() + milliseconds / 1000  # when it ends
    thread = threading.Thread(target=lambda: raw.execute_command("DEBUG", "SLEEP", milliseconds / 1000))
    thread.start()
    # the layer must call in only once the server is asleep: wait until a PING goes unanswered
    probe = server.client(socket_timeout=0.05, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            probe.ping()
        except redis.TimeoutError:
            break
        time.sleep(0.01)
    probe.close()
    return thread


@pytest.mark.parametrize("how", ["pause", "sleep"])
def test_unanswering_redis_times_out_then_recovers(build, server, how):
    socket_timeout = 0.3
    layer = build(connection_kwargs={"socket_timeout": socket_timeout, "socket_connect_timeout": 0.3})
    layer.send("slow?a", {"n": 1})
    calls = {
        "send": lambda: layer.send("slow?a", {"n": 2}),
        "receive": lambda: layer.receive(["slow?a"]),
        "blocking receive": lambda: layer.receive(["slow?b"], block=True),
        "group_add": lambda: layer.group_add("slow", "slow?a"),
    }
    figures = {}
    for name, call in calls.items():
        sleeper = paused(server, 1000, how)
        started = time.monotonic()
        with pytest.raises(LayerConnectionError, match="did not answer in time"):
            call()
        figures[name] = time.monotonic() - started
        if isinstance(sleeper, threading.Thread):
            sleeper.join(10)
        else:
            time.sleep(max(0.0, sleeper - time.monotonic()) + 0.05)
    print(f"\n{how}: calls failed after {', '.join(f'{k} {v:.2f} s' for k, v in figures.items())}")
    for name, elapsed in figures.items():
        # within the socket timeout, plus scheduling noise on a busy machine
        assert elapsed < socket_timeout + 1.5, (name, elapsed)
    layer.send("slow?a", {"n": 3})
    # the send that timed out may have run once the server woke: at most once
    numbers = [m["n"] for _, m in drain(layer, ["slow?a"])]
    assert numbers in ([1, 2, 3], [1, 3]) or numbers in ([2, 3], [3]), numbers
    assert len(numbers) == len(set(numbers))


# -- memory, shards --------------------------------------------------------------


@BOTH_LAYOUTS
def test_out_of_memory_send_raises_and_writes_nothing_half(build):
    small = RedisProcess(extra_config=["maxmemory 3mb", "maxmemory-policy noeviction"])
    try:
        layer = build(hosts=[small.url], capacity=100000)
        payload = {"blob": b"x" * 20000}
        sent, error = 0, None
        for _ in range(2000):
            try:
                layer.send("oom", payload)
                sent += 1
            except ChannelLayerError as failure:
                error = failure
                break
        print(f"\nout of memory after {sent} sends: {type(error).__name__}: {error}")
        assert error is not None, "maxmemory was never reached"
        assert not isinstance(error, (ChannelFull, LayerConnectionError))
        assert "out of memory" in str(error) and str(small.port) in str(error)
        assert isinstance(error.__cause__, redis.ResponseError)
        if layer.layout.name == "classic":
            missing_bodies, orphans = queue_without_bodies(small.client())
            assert not missing_bodies and not orphans
        assert small.client().llen(layer.layout.queue_key("oom")) == sent
        # receiving frees memory and sending works again
        for _ in range(10):
            assert layer.receive(["oom"])[0] == "oom"
        layer.send("oom", {"n": 1})
        layer.flush()
    finally:
        small.close()


def names_on_shard(layer, index, pattern):
    return next(pattern.format(n) for n in itertools.count() if layer.shard_for(pattern.format(n)) == index)


def test_one_shard_down_the_other_keeps_working(build, server):
    second = RedisProcess()
    try:
        layer = build(hosts=[server.url, second.url])
        healthy_channel = names_on_shard(layer, 0, "ok{}?x")
        healthy_process = names_on_shard(layer, 0, "proc{}!")
        healthy_group = names_on_shard(layer, 0, "group{}")
        dead_channel = names_on_shard(layer, 1, "dead{}?x")
        layer.group_add(healthy_group, healthy_channel)
        second.kill()
        layer.send(healthy_channel, {"n": 1})
        layer.send(healthy_process + "a", {"n": 2})
        layer.send_group(healthy_group, {"n": 3})
        assert layer.group_channels(healthy_group) == [healthy_channel]
        assert [m["n"] for _, m in drain(layer, [healthy_channel])] == [1, 3]
        assert layer.receive([healthy_process], block=True) == (healthy_process + "a", {"n": 2})
        with pytest.raises(LayerConnectionError, match=str(second.port)):
            layer.send(dead_channel, {"n": 4})
        with pytest.raises(LayerConnectionError, match=str(second.port)):
            layer.receive([dead_channel])
        # normal channels may live on any shard: a send whose shard refuses the
        # connection (nothing sent) goes to the next one, so none fails
        started = time.monotonic()
        for n in range(10):
            layer.send("spread", {"n": n})
        print(f"\n10 normal-channel sends with one shard of two down took {time.monotonic() - started:.3f} s")
        assert server.client().llen("asgi:spread") == 10
        # and receives of a normal channel go on with the shard that answers
        assert sorted(layer.receive(["spread"])[1]["n"] for _ in range(5)) == list(range(5))
        assert layer.receive(["spread"], block=True)[1]["n"] == 5
        mixed = layer.receive(["spread", dead_channel], block=True)
        assert mixed[0] == "spread"
        second.start()
        layer.send(dead_channel, {"n": 5})
        assert layer.receive([dead_channel]) == (dead_channel, {"n": 5})
        assert sorted(m["n"] for _, m in drain(layer, ["spread"])) == list(range(7, 10))
    finally:
        second.close()


def test_read_only_replica_is_a_clear_error(build, server):
    replica = RedisProcess(extra_config=[f"replicaof 127.0.0.1 {server.port}"])
    try:
        layer = build(hosts=[replica.url])
        calls = (
            lambda: layer.send("ro?a", {"n": 1}),
            lambda: layer.group_add("ro", "ro?a"),
            lambda: layer.receive(["ro?a"]),  # pop.lua's LPOP is a write, even on an empty list
        )
        for call in calls:
            with pytest.raises(LayerConnectionError, match="read-only replica"):
                call()
    finally:
        replica.close()
