"""Load: several processes x threads, every message counted by id.

Sender processes write to a normal channel (shared by every reader, under
capacity pressure), to ``?`` and ``!`` channels (one writer each, so order is
checkable) and to a group whose small-capacity members overflow. Receiver
processes read everything back. The books must balance exactly:

* nothing is delivered twice, nothing arrives that was not sent;
* every confirmed send arrives; the only missing group copies are the ones
  Redis counted as skipped for capacity (``channel_full_count``);
* on ``?`` and ``!`` channels each writer's messages arrive in order;
* afterwards, once the abandoned messages have expired, only statistics keys
  remain in Redis.

``test_soak_full`` (100,000 messages) runs with ``--soak``; ``test_soak_fast``
(10,000) runs in the default suite. Figures are printed (``-s``).
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time

import pytest

from asgi_redis import ChannelFull, RedisChannelLayer

from .servers import RedisProcess

SENDER_PROCESSES = 2
RECEIVER_PROCESSES = 2
NORMAL = "soak.normal"
GROUP = "soak.group"
ABANDONED = 200  # messages sent where nobody reads, left to expire


def group_members():
    return [f"soak.w{k}!group" for k in range(RECEIVER_PROCESSES)] + [
        f"soak.g?r{k}" for k in range(RECEIVER_PROCESSES)
    ]


def layer_config(url):
    return {
        "hosts": [url],
        "expiry": 60,  # nothing may expire during the run: only capacity may drop
        "group_expiry": 300,
        "capacity": 100,
        # normal channel and the ?-members of the group under capacity pressure
        "channel_capacity": {NORMAL: 20, "soak.g[?]*": 3},
    }


# -- child processes -------------------------------------------------------------


def sender_process(number, url, count, results):
    """Two threads: one floods the normal channel, one writes ? / ! channels and the group."""
    layer = RedisChannelLayer(**layer_config(url))
    record = {"normal": [], "dropped": 0, "directed": [], "full_retries": 0, "group": [], "errors": 0}
    lock = threading.Lock()
    normal_count = count // 2
    directed_count = count - normal_count

    def normal():
        for seq in range(normal_count):
            identifier = f"s{number}n{seq}"
            try:
                layer.send(NORMAL, {"id": identifier, "seq": seq, "pad": "x" * (seq % 200)})
            except ChannelFull:
                with lock:
                    record["dropped"] += 1
                continue
            with lock:
                record["normal"].append(identifier)

    def directed():
        for seq in range(directed_count):
            identifier = f"s{number}d{seq}"
            message = {"id": identifier, "seq": seq, "writer": number}
            if seq % 10 == 9:
                layer.send_group(GROUP, message)  # full members are skipped silently
                with lock:
                    record["group"].append(identifier)
                continue
            reader = seq % RECEIVER_PROCESSES
            channel = f"soak.q{reader}?s{number}" if seq % 2 else f"soak.w{reader}!s{number}"
            while True:
                try:
                    layer.send(channel, message)
                    break
                except ChannelFull:  # nothing was queued: sending again cannot duplicate
                    with lock:
                        record["full_retries"] += 1
                    time.sleep(0.005)
            with lock:
                record["directed"].append((channel, identifier))

    run_to_the_end([threading.Thread(target=normal), threading.Thread(target=directed)])
    layer.close()
    results.put(("sender", number, record))


def run_to_the_end(threads):
    """Start every thread, then wait for all of them."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def receiver_process(number, url, senders_done, results):
    """Two threads: one on the shared normal channel, one on this process's ? and ! channels."""
    layer = RedisChannelLayer(**layer_config(url))
    layer.blpop_timeout = 0.3
    received = []
    lock = threading.Lock()
    directed_channels = [f"soak.w{number}!", f"soak.g?r{number}"] + [
        f"soak.q{number}?s{s}" for s in range(SENDER_PROCESSES)
    ]

    def read(channels):
        idle = 0
        while idle < 2:
            channel, message = layer.receive(channels, block=True)
            if channel is None:
                idle = idle + 1 if senders_done.is_set() else 0
                continue
            idle = 0
            with lock:
                received.append((channel, message["id"], message["seq"], message.get("writer")))

    run_to_the_end([threading.Thread(target=read, args=(channels,)) for channels in ([NORMAL], directed_channels)])
    layer.close()
    results.put(("receiver", number, received))


# -- the run and its books --------------------------------------------------------


def run_soak(total):
    server = RedisProcess()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    senders_done = context.Event()
    try:
        layer = RedisChannelLayer(**layer_config(server.url))
        for member in group_members():
            layer.group_add(GROUP, member)
        # messages nobody reads, on a layer with a 1 s expiry: they must expire away
        abandoned = RedisChannelLayer(**{**layer_config(server.url), "expiry": 1})
        for seq in range(ABANDONED):
            abandoned.send(f"soak.abandoned{seq % 4}", {"seq": seq})
        started = time.monotonic()
        receivers = [
            context.Process(target=receiver_process, args=(k, server.url, senders_done, results))
            for k in range(RECEIVER_PROCESSES)
        ]
        senders = [
            context.Process(target=sender_process, args=(s, server.url, total // SENDER_PROCESSES, results))
            for s in range(SENDER_PROCESSES)
        ]
        for process in receivers + senders:
            process.start()
        records, received = {}, []
        for _ in senders:
            kind, number, record = results.get(timeout=600)
            records[number] = record
        senders_done.set()
        for _ in receivers:
            kind, number, got = results.get(timeout=600)
            received += got
        elapsed = time.monotonic() - started
        for process in receivers + senders:
            process.join(30)
            assert process.exitcode == 0, process
        statistics = layer.global_statistics()
        books = balance(records, received, statistics)
        books["seconds"] = round(elapsed, 1)
        books["messages_per_second"] = round(total / elapsed)
        for member in group_members():
            layer.group_discard(GROUP, member)
        books["expired"] = ABANDONED
        books["keys_left"] = wait_for_only_statistics(server)
        layer.close()
        abandoned.close()
        return books
    finally:
        senders_done.set()
        server.close()


def balance(records, received, statistics):
    deliveries = collections.Counter((channel, identifier) for channel, identifier, _, _ in received)
    duplicates = [key for key, count in deliveries.items() if count > 1]
    assert not duplicates, f"delivered twice: {duplicates[:10]}"

    expected = {}
    for record in records.values():
        expected.update({(NORMAL, identifier): "normal" for identifier in record["normal"]})
        expected.update({(channel, identifier): "directed" for channel, identifier in record["directed"]})
        for identifier in record["group"]:
            expected.update({(member, identifier): "group" for member in group_members()})
    unknown = set(deliveries) - set(expected)
    assert not unknown, f"received what was never sent: {sorted(unknown)[:10]}"
    missing = collections.Counter(kind for key, kind in expected.items() if key not in deliveries)
    assert missing["normal"] == 0 and missing["directed"] == 0, missing

    dropped = sum(record["dropped"] for record in records.values())
    full_retries = sum(record["full_retries"] for record in records.values())
    group_skipped = statistics["channel_full_count"] - dropped - full_retries
    assert missing["group"] == group_skipped, (missing, statistics, dropped, full_retries)
    assert statistics["messages_count"] == len(deliveries) + ABANDONED

    last = {}
    for channel, _identifier, seq, writer in received:
        if "?" in channel or "!" in channel:
            key = (channel, writer)
            assert seq > last.get(key, -1), f"out of order on {channel} from writer {writer}"
            last[key] = seq
    sends = sum(
        len(r["normal"]) + r["dropped"] + len(r["directed"]) + len(r["group"]) for r in records.values()
    )
    return {
        "messages": sends,
        "sent": sum(len(r["normal"]) + len(r["directed"]) for r in records.values()),
        "group_sends": sum(len(r["group"]) for r in records.values()),
        "received": len(deliveries),
        "dropped_for_capacity": dropped,
        "group_copies_skipped_for_capacity": group_skipped,
        "resent_after_channel_full": full_retries,
        "duplicates": 0,
        "lost": 0,
    }


def wait_for_only_statistics(server, timeout=15.0):
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        left = [key for key in client.scan_iter(count=1000) if not key.startswith(b"asgi-meta:")]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    client.close()
    assert not left, f"keys left after expiry: {left[:10]}"
    return 0


@pytest.mark.soak
def test_soak_full():
    books = run_soak(100_000)
    print(f"\nsoak 100k: {books}")


def test_soak_fast():
    books = run_soak(10_000)
    print(f"\nsoak 10k: {books}")
