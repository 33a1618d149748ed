"""Hostile and unusual input: property tests of round trips and names, and
bodies planted straight into Redis (the 1.4.3 layout) that no layer wrote.

A worker must survive anything found in Redis: a bad body is skipped, counted
in ``layer.undecodable_count`` and logged, and ``receive`` goes on with the
next message. It never raises from deep inside msgpack or Fernet, and never
returns something that is not a complete, valid message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid

import msgpack
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_redis import spec
from asgi_redis.serializers import fernet_key

PROPERTY = settings(
    max_examples=120, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies --------------------------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=40)
channel_names = st.one_of(
    names,
    st.builds(lambda a, b: f"{a}?{b}", names, names),
    st.builds(lambda a, b: f"{a}!{b}", names, names),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=spec.INT_MIN, max_value=spec.INT_MAX),
    st.floats(allow_nan=False),
    st.text(max_size=200),
    st.binary(max_size=200),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=20), inner, max_size=8),
    ),
    max_leaves=40,
)
messages = st.dictionaries(
    st.text(max_size=30).filter(lambda key: key != spec.RESERVED_KEY), values, max_size=10
)


def as_received(value):
    """What a value looks like after the round trip: tuples come back as lists."""
    if isinstance(value, (list, tuple)):
        return [as_received(item) for item in value]
    if isinstance(value, dict):
        return {key: as_received(item) for key, item in value.items()}
    return value


def same(left, right):
    """Equality that also tells bytes from str, bool from int, and -0.0 from 0.0."""
    if type(left) is not type(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, float):
        return repr(left) == repr(right)
    return left == right


# -- round trips ---------------------------------------------------------------


@pytest.fixture(params=["plain", "encrypted"])
def any_layer(request, make_layer):
    if request.param == "plain":
        return make_layer(expiry=30)
    return make_layer(expiry=30, symmetric_encryption_keys=["hostile-key", "older-key"])


@PROPERTY
@given(channel=channel_names, message=messages)
def test_round_trip_of_any_allowed_message(any_layer, channel, message):
    any_layer.send(channel, message)
    received_on = spec.non_local_name(channel)
    got_channel, got = any_layer.receive([received_on])
    assert got_channel == channel
    assert same(got, as_received(message)), (got, message)


def test_round_trip_at_the_size_and_depth_limits(make_layer):
    layer = make_layer(expiry=30)
    big = {"text": "é" * 300_000, "bytes": b"\x00\xff" * 200_000, "list": list(range(20_000))}
    layer.send("big", big)
    assert layer.receive(["big"]) == ("big", {**big})
    deep = current = {}
    for _ in range(spec.MAX_NESTING - 1):
        current["d"] = {}
        current = current["d"]
    layer.send("deep", deep)
    assert layer.receive(["deep"]) == ("deep", deep)
    too_deep = {"d": deep}
    for _ in range(3):
        too_deep = {"d": too_deep}
    with pytest.raises(ValueError, match="nesting"):
        layer.send("deep", too_deep)
    layer.max_message_size = 1000
    with pytest.raises(layer.MessageTooLarge, match="1000"):
        layer.send("big", {"text": "x" * 2000})


# -- names and message validation -------------------------------------------------

VALID_CHANNEL = re.compile(r"[a-zA-Z0-9\-_.]+([?!][a-zA-Z0-9\-_.]*)?")
VALID_GROUP = re.compile(r"[a-zA-Z0-9\-_.]+")
any_text = st.one_of(st.text(max_size=120), st.text(alphabet=NAME_CHARS + "?!: *\x00é", max_size=110))


@PROPERTY
@given(name=any_text)
def test_channel_name_validation(layer, name):
    valid = bool(VALID_CHANNEL.fullmatch(name)) and len(name) < 100 and not name.endswith("?")
    if valid:
        layer.send(name, {"n": 1})
        got, _ = layer.receive([spec.non_local_name(name)])
        assert got == name
    else:
        with pytest.raises(TypeError) as raised:
            layer.send(name, {"n": 1})
        assert "Channel name" in str(raised.value)


@PROPERTY
@given(name=any_text)
def test_receive_name_validation(layer, name):
    valid = (bool(VALID_CHANNEL.fullmatch(name)) and len(name) < 100 and not name.endswith("?")
             and ("!" not in name or name.endswith("!")))
    if valid:
        assert layer.receive([name]) == (None, None)
    else:
        with pytest.raises(TypeError, match="Channel name"):
            layer.receive([name])
        with pytest.raises(TypeError, match="Channel name"):
            layer.receive(["fine", name], block=True)


@PROPERTY
@given(name=any_text)
def test_group_name_validation(layer, name):
    valid = bool(VALID_GROUP.fullmatch(name)) and len(name) < 100
    if valid:
        layer.group_add(name, "member")
        assert layer.group_channels(name) == ["member"]
        layer.group_discard(name, "member")
    else:
        for call in (layer.group_add, layer.group_discard):
            with pytest.raises(TypeError, match="Group name"):
                call(name, "member")
        with pytest.raises(TypeError, match="Group name"):
            layer.send_group(name, {"n": 1})


@PROPERTY
@given(bad=st.sampled_from([
    {1, 2}, frozenset(), object(), 1j, bytearray(b"x"), memoryview(b"x"), 2**63, -(2**63) - 1, float,
]), where=st.sampled_from(["top", "list", "dict"]))
def test_unsendable_values_are_refused_before_redis(layer, round_trips, bad, where):
    message = {"top": bad} if where == "top" else {"a": [1, bad]} if where == "list" else {"a": {"b": bad}}
    round_trips.count = 0
    with pytest.raises((TypeError, ValueError)) as raised:
        layer.send("refused", message)
    assert "message[" in str(raised.value)
    assert round_trips.count == 0


def test_non_str_keys_and_reserved_key_are_refused(layer):
    for message in ({1: "x"}, {"a": {b"k": 1}}, {"a": [{None: 1}]}):
        with pytest.raises(TypeError, match="keys must be str"):
            layer.send("refused", message)
    with pytest.raises(ValueError, match=spec.RESERVED_KEY):
        layer.send("refused", {spec.RESERVED_KEY: "x"})
    for not_a_dict in ([], "text", None, b"x"):
        with pytest.raises(TypeError, match="must be a dict"):
            layer.send("refused", not_a_dict)


# -- bodies planted in Redis ------------------------------------------------------


def plant(raw, body, channel="planted", prefix="asgi:", ttl=30):
    """Queue ``body`` on ``channel`` exactly as asgi_redis 1.4.3 would have."""
    key = prefix + uuid.uuid4().hex
    raw.set(key, body, ex=ttl)
    raw.rpush(prefix + spec.non_local_name(channel), key)
    raw.expire(prefix + spec.non_local_name(channel), ttl + 1)


VALID = msgpack.packb({"type": "valid", "n": 1}, use_bin_type=True)
CORRUPT_BODIES = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1 not msgpack",
    "truncated": VALID[: len(VALID) // 2],
    "trailing bytes": VALID + b"\x00\x01",
    "a list": msgpack.packb([1, 2, 3]),
    "an int": msgpack.packb(7),
    "a str": msgpack.packb("hello", use_bin_type=True),
    "bad utf-8": b"\x81\xa1a\xa2\xff\xfe",
    "int keys": msgpack.packb({1: "x"}),
    "bytes keys": msgpack.packb({"a": {b"k": 1}}, use_bin_type=True),
    "huge declared length": b"\x81\xa1a\xdb\xff\xff\xff\xff",
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
    "ext type": msgpack.packb({"a": msgpack.ExtType(5, b"xyz")}),
    "fernet token": Fernet(Fernet.generate_key()).encrypt(VALID),
}


def receive_all(layer, channel="planted", block=False):
    found = []
    while True:
        got_channel, message = layer.receive([channel], block=block)
        if got_channel is None:
            return found
        found.append(message)
        block = False


def valid_message(message):
    try:
        spec.validate_message(message)
        return True
    except (TypeError, ValueError):
        return False


@pytest.mark.parametrize("kind", sorted(CORRUPT_BODIES))
def test_corrupt_body_is_skipped_counted_and_logged(layer, raw, caplog, kind):
    plant(raw, CORRUPT_BODIES[kind])
    plant(raw, VALID)
    with caplog.at_level(logging.WARNING, logger="asgi_redis"):
        found = receive_all(layer)
    assert found == [{"type": "valid", "n": 1}], found
    assert layer.undecodable_count == 1
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("asgi_redis")]
    assert len(lines) == 1 and "planted" in lines[0], lines
    assert "xyz" not in lines[0] and "hello" not in lines[0]


@PROPERTY
@given(body=st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=50).map(lambda junk: VALID[: len(junk) % len(VALID)] + junk),
))
def test_fuzzed_bodies_never_crash_receive(layer, raw, body):
    plant(raw, body)
    plant(raw, VALID)
    before = layer.undecodable_count
    found = receive_all(layer)
    assert found[-1] == {"type": "valid", "n": 1}
    # whatever else came out decoded to a complete dict of allowed values, or was counted
    assert all(isinstance(message, dict) and valid_message(message) for message in found), found
    assert layer.undecodable_count - before == 2 - len(found)


def test_corrupt_body_met_by_a_blocked_receiver(layer, raw):
    """The blocking path (BLPOP, then the body) skips bad bodies the same way."""
    layer.blpop_timeout = 10
    result = []
    thread = threading.Thread(target=lambda: result.append(layer.receive(["planted"], block=True)))
    thread.start()
    time.sleep(0.3)  # let it reach BLPOP
    plant(raw, CORRUPT_BODIES["garbage"])
    time.sleep(0.1)
    plant(raw, VALID)
    thread.join(15)
    assert result == [("planted", {"type": "valid", "n": 1})]
    assert layer.undecodable_count == 1


def encrypt(key, message, at=None):
    fernet = Fernet(fernet_key(key))
    plain = msgpack.packb(message, use_bin_type=True)
    return fernet.encrypt(plain) if at is None else fernet.encrypt_at_time(plain, int(at))


def test_msgpack_timestamp_arrives_as_float_seconds(layer, raw):
    plant(raw, msgpack.packb({"at": msgpack.Timestamp(1700000000, 500_000_000)}))
    assert receive_all(layer) == [{"at": 1700000000.5}]


def test_unknown_key_tampered_and_expired_tokens_are_dropped(make_layer, raw, caplog):
    layer = make_layer(expiry=30, symmetric_encryption_keys=["current", "previous"])
    good = encrypt("current", {"n": "good"})
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 1
    bodies = [
        encrypt("stranger", {"n": "secret-from-stranger"}),  # unknown key
        encrypt("current", {"n": "stale"}, at=time.time() - (30 + 11)),  # older than the decrypt TTL
        bytes(tampered),
        good[:-7],  # truncated token
        VALID,  # plain msgpack in an encrypted layer
        encrypt("previous", {"n": "rotated"}),  # an older key still decrypts
        good,
    ]
    for body in bodies:
        plant(raw, body)
    with caplog.at_level(logging.WARNING, logger="asgi_redis"):
        found = receive_all(layer)
    assert found == [{"n": "rotated"}, {"n": "good"}]
    assert layer.undecodable_count == 5
    log = "\n".join(record.getMessage() for record in caplog.records)
    assert log.count("planted") == 5 and "decrypt" in log
    for secret in ("secret-from-stranger", "stale", "current", "previous", "stranger"):
        assert secret not in log


def test_planted_process_channel_body_reports_its_channel(make_layer, raw):
    layer = make_layer(expiry=30)
    for body in ({"n": 1, spec.RESERVED_KEY: "worker!abc"}, {"n": 2, spec.RESERVED_KEY: 12}):
        plant(raw, msgpack.packb(body, use_bin_type=True), channel="worker!abc")
    got = [layer.receive(["worker!"]) for _ in range(2)]
    assert got[0] == ("worker!abc", {"n": 1})
    # a non-str reserved value is not trusted as a channel name, and never leaks out
    assert got[1][1] == {"n": 2} and got[1][0] == "worker!"
