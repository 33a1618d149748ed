"""End to end under the real Channels 1 stack: redis-server, daphne 1.4.2 and
``manage.py runworker`` (channels 1.1.8) processes on free loopback ports,
driven over real HTTP and WebSocket connections.

Runs in the ``channels1`` tox env; skipped wherever Channels 1 is not
installed. Every process is started here and stopped by its own pid.
Timing figures are printed (run with ``-s``), never asserted tightly: the
machine is small and shared.
"""

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

channels = pytest.importorskip("channels")
if not channels.__version__.startswith("1."):
    pytest.skip(f"needs Channels 1.x, found {channels.__version__}", allow_module_level=True)
pytest.importorskip("daphne")
websocket = pytest.importorskip("websocket")  # websocket-client

from asgi_redis import RedisChannelLayer  # noqa: E402

from .servers import RedisProcess, free_port  # noqa: E402

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "channels1_project")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOM = "e2e-room"
DAPHNE = "from daphne.cli import CommandLineInterface; CommandLineInterface.entrypoint()"


class Deployment:
    """redis shards + daphne + runworker processes, all started and stopped here."""

    def __init__(self, shards: int, workers: int):
        self.redis = [RedisProcess() for _ in range(shards)]
        self.directory = tempfile.mkdtemp(prefix="asgi-redis-e2e-")
        os.mkdir(os.path.join(self.directory, "sessions"))
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [REPO, PROJECT, os.environ.get("PYTHONPATH")])),
            "DJANGO_SETTINGS_MODULE": "c1app.settings",
            "E2E_REDIS_HOSTS": ",".join(server.url for server in self.redis),
            "E2E_SESSION_DIR": os.path.join(self.directory, "sessions"),
            "PYTHONUNBUFFERED": "1",
        }
        self.port = free_port()
        self.daphne = None
        self.workers = []
        try:
            for n in range(workers):
                self.workers.append(self._spawn(f"worker{n}", [sys.executable, "manage.py", "runworker"]))
            self.start_daphne(force_sync=False)
            self._wait_for_workers()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name, command):
        log = open(os.path.join(self.directory, name + ".log"), "ab")
        process = subprocess.Popen(command, cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        process.log_path, process.name = log.name, name
        log.close()
        return process

    def start_daphne(self, force_sync: bool) -> None:
        if self.daphne is not None:
            _stop([self.daphne])
        command = [sys.executable, "-c", DAPHNE, "-b", "127.0.0.1", "-p", str(self.port)]
        if force_sync:
            command.append("--force-sync")
        self.daphne = self._spawn("daphne", command + ["c1app.asgi:channel_layer"])
        mode = "busy-loop synchronous mode" if force_sync else "native Twisted mode"
        self._wait_for_log(self.daphne, mode)
        self._wait_for_log(self.daphne, "Listening on endpoint")

    def _wait_for_workers(self) -> None:
        for worker in self.workers:
            self._wait_for_log(worker, "Listening on channels")
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/hello/")[0] == 200:
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _wait_for_log(self, process, text, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with open(process.log_path, errors="replace") as handle:
                if text in handle.read():
                    return
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} never logged {text!r}:\n{self.log_tail(process)}")
            time.sleep(0.05)

    def log_tail(self, process) -> str:
        with open(process.log_path, errors="replace") as handle:
            return handle.read()[-3000:]

    # -- clients ---------------------------------------------------------------

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            return response.status, response.read()

    def post(self, path: str, body: bytes):
        request = urllib.request.Request(self.url(path), data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()

    def websocket(self, path: str):
        return websocket.create_connection(self.url(path, "ws"), timeout=10)

    def layer(self) -> RedisChannelLayer:
        """A layer of our own on the same Redis, for inspecting groups and keys."""
        return RedisChannelLayer(hosts=[server.url for server in self.redis], capacity=1000)

    def leftover_keys(self):
        return [key for server in self.redis for key in server.client().keys("asgi:*")]

    def redis_connections_opened(self) -> int:
        return sum(server.client().info("stats")["total_connections_received"] for server in self.redis)

    def stop(self) -> None:
        _stop([process for process in [self.daphne, *self.workers] if process is not None])
        for server in self.redis:
            server.close()


def _stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(8)  # runworker finishes its current bounded receive first
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module", params=[(1, 2), (2, 1)], ids=["1shard-2workers", "2shards-1worker"])
def deployment(request):
    shards, workers = request.param
    deployment = Deployment(shards, workers)
    yield deployment
    deployment.stop()


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- HTTP ------------------------------------------------------------------------


def test_http_view(deployment):
    status, body = deployment.get("/hello/")
    assert status == 200
    assert body.startswith(b"hello from worker ")


def test_http_200_kib_post(deployment):
    payload = os.urandom(200 * 1024)
    status, body = deployment.post("/upload/", payload)
    assert status == 200
    assert json.loads(body) == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


# -- WebSocket ------------------------------------------------------------------


def test_websocket_echo_text_binary_and_60kb(deployment):
    socket = deployment.websocket("/echo/")
    try:
        socket.send("héllo")
        assert socket.recv() == "héllo"
        socket.send_binary(b"\x00\xffbinary")
        assert socket.recv() == b"\x00\xffbinary"
        big_text = "x" * 60_000
        socket.send(big_text)
        assert socket.recv() == big_text
        big_bytes = os.urandom(60_000)
        socket.send_binary(big_bytes)
        assert socket.recv() == big_bytes
    finally:
        socket.close()


def test_enforce_ordering(deployment):
    socket = deployment.websocket("/ordered/")
    try:
        sent = [f"m{i}" for i in range(40)]
        for text in sent:  # all at once: the workers race for them
            socket.send(text)
        assert [socket.recv() for _ in sent] == sent
    finally:
        socket.close()


def test_group_broadcast_and_discard_on_disconnect(deployment):
    layer = deployment.layer()
    sockets = [deployment.websocket("/room/") for _ in range(3)]
    try:
        assert len(layer.group_channels(ROOM)) == 3
        sockets[0].send("to everyone")
        assert [socket.recv() for socket in sockets] == ["to everyone"] * 3
        sockets.pop().close()
        wait_until(lambda: len(layer.group_channels(ROOM)) == 2, what="discard on disconnect")
        sockets[1].send("to the rest")
        assert [socket.recv() for socket in sockets] == ["to the rest"] * 2
    finally:
        for socket in sockets:
            socket.close()
    wait_until(lambda: layer.group_channels(ROOM) == [], what="every member discarded")
    layer.close()


# -- figures ------------------------------------------------------------------------


def measure_echoes(deployment, latency_count, pipelined_count, window=16):
    """Sequential round trips (latency) and a sliding window of echoes (throughput)."""
    socket = deployment.websocket("/echo/")
    try:
        for i in range(10):  # warm up connections on every process
            socket.send(str(i))
            socket.recv()
        latencies = []
        started = time.perf_counter()
        for i in range(latency_count):
            before = time.perf_counter()
            socket.send(f"echo {i}")
            assert socket.recv() == f"echo {i}"
            latencies.append(time.perf_counter() - before)
        sequential_rate = latency_count / (time.perf_counter() - started)
        started = time.perf_counter()
        sent, replies = 0, []
        while sent < min(window, pipelined_count):
            socket.send(f"p{sent}")
            sent += 1
        while len(replies) < pipelined_count:
            replies.append(socket.recv())  # two workers may swap neighbours: no order here
            if sent < pipelined_count:
                socket.send(f"p{sent}")
                sent += 1
        pipelined_rate = pipelined_count / (time.perf_counter() - started)
        assert sorted(replies) == sorted(f"p{i}" for i in range(pipelined_count))
    finally:
        socket.close()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "sequential_per_s": sequential_rate,
        "pipelined_per_s": pipelined_rate,
    }


def report(label, figures):
    print(
        f"\n[channels1 e2e] {label}: echo p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
        f"{figures['sequential_per_s']:.0f} echoes/s one at a time, "
        f"{figures['pipelined_per_s']:.0f} echoes/s with 16 in flight"
    )


def test_echo_figures_twisted_and_force_sync(deployment, request):
    label = request.node.callspec.id
    opened_before = deployment.redis_connections_opened()
    twisted = measure_echoes(deployment, latency_count=500, pipelined_count=2000)
    opened = deployment.redis_connections_opened() - opened_before
    report(f"{label} daphne twisted mode", twisted)
    # persistent connections: 1.4.3's receive_twisted opened ten per message
    assert opened <= 10, f"{opened} Redis connections opened during 2500 echoes"
    deployment.start_daphne(force_sync=True)
    try:
        polling = measure_echoes(deployment, latency_count=60, pipelined_count=300)
        report(f"{label} daphne --force-sync", polling)
    finally:
        deployment.start_daphne(force_sync=False)
    # generous bounds only (shared 2-core machine); the figures are printed above
    assert twisted["p50_ms"] < 25
    assert twisted["p50_ms"] < polling["p50_ms"]  # daphne's 50 ms idle poll is gone


def test_no_message_left_in_redis(deployment):
    """Run last: every body was deleted on receive, every queue drained."""
    wait_until(lambda: deployment.leftover_keys() == [], timeout=15, what="Redis to drain")
    assert deployment.leftover_keys() == []
