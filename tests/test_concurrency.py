"""One layer object shared by threads, and a layer created before fork() used
in the children: every message arrives exactly once, in order on ? and ! channels."""

import multiprocessing
import os
import threading
from collections import Counter, defaultdict

import pytest

from asgi_redis import RedisChannelLayer

TOTAL = 10_000


def _drain(layer, channels, expected, results, key):
    """Receive until ``expected`` messages came in (or 5 s of silence)."""
    misses = 0
    while len(results[key]) < expected and misses < 3:
        channel, message = layer.receive(channels, block=True)
        if channel is None:
            misses += 1
            continue
        results[key].append((channel, message["sender"], message["seq"]))


def _check_exactly_once_and_ordered(received, senders, per_sender):
    ids = Counter((sender, seq) for _, sender, seq in received)
    assert max(ids.values()) == 1, "a message was delivered twice"
    assert len(ids) == senders * per_sender, f"lost {senders * per_sender - len(ids)} messages"


@pytest.fixture(params=["classic", "compact"])
def big_layer(request, redis_shards):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shards], capacity=TOTAL, expiry=60, layout=request.param)
    layer.flush()
    yield layer
    layer.flush()
    layer.close()


def test_threads_share_one_layer(big_layer):
    senders, per_sender = 4, TOTAL // 8
    results = defaultdict(list)

    def send(sender):
        for seq in range(per_sender):
            big_layer.send("work", {"sender": sender, "seq": seq})
            big_layer.send(f"reply?{sender}", {"sender": sender, "seq": seq})

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    threads += [
        threading.Thread(target=_drain, args=(big_layer, ["work"], senders * per_sender // 3, results, f"work{n}"))
        for n in range(3)
    ]
    threads += [
        threading.Thread(target=_drain, args=(big_layer, [f"reply?{n}"], per_sender, results, f"reply{n}"))
        for n in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    work = [item for n in range(3) for item in results[f"work{n}"]]
    while True:  # whatever the three workers left (each stops at its share)
        channel, message = big_layer.receive(["work"])
        if channel is None:
            break
        work.append((channel, message["sender"], message["seq"]))
    _check_exactly_once_and_ordered(work, senders, per_sender)
    for n in range(senders):
        assert [seq for _, _, seq in results[f"reply{n}"]] == list(range(per_sender))


def _child_sender(layer, sender, per_sender):
    # the layer (and its connection pools) was created in the parent before fork
    for seq in range(per_sender):
        layer.send("forked!" + str(sender), {"sender": sender, "seq": seq})
        layer.send("forked.work", {"sender": sender, "seq": seq})
    os._exit(0)


def _child_receiver(layer, expected, queue):
    results = defaultdict(list)
    _drain(layer, ["forked.work"], expected, results, "work")
    queue.put(results["work"])
    queue.close()
    queue.join_thread()  # os._exit would otherwise drop the queued result
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_processes_forked_after_layer_creation(big_layer):
    big_layer.send("warm", {})  # the parent has live pooled connections before fork
    big_layer.receive(["warm"])
    senders, per_sender = 4, TOTAL // 8
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_child_sender, args=(big_layer, n, per_sender)) for n in range(senders)]
    children += [context.Process(target=_child_receiver, args=(big_layer, senders * per_sender // 2, queue))
                 for _ in range(2)]
    for child in children:
        child.start()
    # the parent reads the ! channel while children use their inherited copies
    process_results = defaultdict(list)
    _drain(big_layer, ["forked!"], senders * per_sender, process_results, "proc")
    work = queue.get(timeout=120) + queue.get(timeout=120)
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    _check_exactly_once_and_ordered(work, senders, per_sender)
    _check_exactly_once_and_ordered(process_results["proc"], senders, per_sender)
    by_sender = defaultdict(list)
    for channel, sender, seq in process_results["proc"]:
        assert channel == f"forked!{sender}"
        by_sender[sender].append(seq)
    assert all(seqs == list(range(per_sender)) for seqs in by_sender.values())


def test_group_fan_out_across_threads(big_layer):
    """send_group to many members of one process: the compact layout stores one
    entry naming them all and the receiving threads share its fan-out."""
    members, rounds = 50, TOTAL // 50
    for n in range(members):
        big_layer.group_add("fan", f"fan.proc!{n}")
    results = defaultdict(list)
    receivers = [
        threading.Thread(target=_drain, args=(big_layer, ["fan.proc!"], members * rounds // 3, results, f"r{n}"))
        for n in range(3)
    ]
    for thread in receivers:
        thread.start()
    for seq in range(rounds):
        big_layer.send_group("fan", {"sender": "group", "seq": seq})
    for thread in receivers:
        thread.join(120)
    received = [item for n in range(3) for item in results[f"r{n}"]]
    while True:
        channel, message = big_layer.receive(["fan.proc!"])
        if channel is None:
            break
        received.append((channel, message["sender"], message["seq"]))
    per_member = Counter((channel, seq) for channel, _, seq in received)
    assert max(per_member.values()) == 1, "a member got a message twice"
    assert len(per_member) == members * rounds, f"lost {members * rounds - len(per_member)}"
