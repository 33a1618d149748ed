"""Unit tests of the transport-free rules: names, capacities, messages, hashing."""

import re
from collections import OrderedDict

import pytest

from asgi_redis import spec
from asgi_redis.connections import parse_host, parse_hosts, shard_index


@pytest.mark.parametrize("name", ["http.request", "a", "foo?bar", "foo!", "foo!bar", "A-b_c.9", "x" * 99])
def test_valid_channel_names(name):
    assert spec.validate_channel_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "foo?", "a b", "caf\u00e9", "foo?bar?", "foo!a!b", "foo?a!b", "x" * 100, "foo/bar", "\u00e9!x", "a!\u00e9"],
)
def test_invalid_channel_names_name_the_value(name):
    with pytest.raises(TypeError) as info:
        spec.validate_channel_name(name)
    assert repr(name[:40]) in str(info.value)


@pytest.mark.parametrize("name", [b"bytes", 5, None, ["list"]])
def test_channel_name_must_be_str(name):
    with pytest.raises(TypeError, match="must be a str"):
        spec.validate_channel_name(name)


def test_receive_takes_process_channels_up_to_the_bang():
    assert spec.validate_channel_name("foo!", receive=True) == "foo!"
    assert spec.validate_channel_name("foo!abc") == "foo!abc"
    with pytest.raises(TypeError, match="'foo!'"):
        spec.validate_channel_name("foo!abc", receive=True)


def test_channel_list():
    assert spec.validate_channel_list(("a", "b!")) == ["a", "b!"]
    with pytest.raises(TypeError, match="list of channel names"):
        spec.validate_channel_list("http.request")
    with pytest.raises(TypeError, match="'bad name'"):
        spec.validate_channel_list(["ok", "bad name"])


@pytest.mark.parametrize("name", ["foo?", "foo!", "a b", "", "x" * 100])
def test_invalid_group_names(name):
    with pytest.raises(TypeError):
        spec.validate_group_name(name)


def test_new_channel_patterns():
    assert spec.validate_new_channel_pattern("test.foo?", 12) == "test.foo?"
    for bad in ["test!", "test.foo", "te?st?", "?", "a b?", "x" * 90 + "?"]:
        with pytest.raises(TypeError, match=re.escape(repr(bad)[:20])):
            spec.validate_new_channel_pattern(bad, 12)


def test_non_local_name():
    assert spec.non_local_name("foo!bar") == "foo!"
    assert spec.non_local_name("foo!") == "foo!"
    assert spec.non_local_name("foo?bar") == "foo?bar"
    assert spec.non_local_name("foo") == "foo"


def test_capacity_first_match_wins_in_order():
    table = spec.CapacityTable(
        100,
        OrderedDict([("http.*", 10), (re.compile(r"^http\.resp"), 5), ("daphne!", 7), ("*", 50)]),
    )
    assert table.for_channel("http.response") == 10  # the glob comes first
    assert table.for_channel("daphne!") == 7
    assert table.for_channel("websocket.send") == 50
    assert spec.CapacityTable(100, {re.compile("^a"): 3}).for_channel("abc") == 3
    assert spec.CapacityTable(100, {re.compile("^a"): 3}).for_channel("bcd") == 100


@pytest.mark.parametrize(
    "default, patterns, words",
    [
        (0, None, "capacity"),
        (True, None, "capacity"),
        ("10", None, "capacity"),
        (10, {"a*": 0}, "channel_capacity['a*']"),
        (10, {5: 3}, "5"),
        (10, [("a", 1)], "channel_capacity must be a dict"),
    ],
)
def test_capacity_config_errors(default, patterns, words):
    with pytest.raises(ValueError) as info:
        spec.CapacityTable(default, patterns)
    assert words in str(info.value)


def test_valid_message_passes_unchanged():
    message = {"a": [1, (2, 3), {"b": b"x", "c": None, "d": 1.5, "e": True}], "big": 2**63 - 1, "neg": -(2**63)}
    assert spec.validate_message(message) is message


@pytest.mark.parametrize(
    "message, error, words",
    [
        ([1], TypeError, "message must be a dict, not list"),
        ({1: "a"}, TypeError, "dict key 1 is int"),
        ({"a": {"b": {2: 1}}}, TypeError, "message['a']['b'] dict key 2 is int"),
        ({"a": [1, {1, 2}]}, TypeError, "message['a'][1] holds a set"),
        ({"a": object()}, TypeError, "message['a'] holds a object"),
        ({"a": bytearray(b"x")}, TypeError, "holds a bytearray"),
        ({"n": [2**63]}, ValueError, "message['n'][0] integer 9223372036854775808 is outside"),
        ({"n": -(2**63) - 1}, ValueError, "outside the signed 64-bit range"),
        ({"__asgi_channel__": "x"}, ValueError, "reserved"),
    ],
)
def test_bad_messages_name_the_value(message, error, words):
    with pytest.raises(error) as info:
        spec.validate_message(message)
    assert words in str(info.value)


def test_deep_nesting_is_refused_clearly():
    message = value = {}
    for _ in range(spec.MAX_NESTING + 5):
        value["x"] = {}
        value = value["x"]
    with pytest.raises(ValueError, match="nesting deeper than"):
        spec.validate_message(message)


# crc32(name) & 0xfff, then scaled to the shard count: values computed once
# from the formula of 1.4.3 (test_compat checks them against 1.4.3 itself).
@pytest.mark.parametrize(
    "name, shards, index",
    [
        ("http.request", 1, 0),  # crc bucket 2906
        ("http.request", 2, 1),
        ("http.request", 3, 2),
        ("http.request", 5, 3),
        ("daphne.response.abc!", 2, 0),  # bucket 1536
        ("daphne.response.abc!", 3, 1),
        ("reply?xYz", 4, 0),  # bucket 950
        ("reply?xYz", 5, 1),
        ("websocket.send", 4, 2),  # bucket 2362
    ],
)
def test_shard_index_known_values(name, shards, index):
    assert shard_index(name, shards) == index


def test_hosts_parsing():
    assert parse_hosts(None, [("localhost", 6379)]) == [("localhost", 6379)]
    assert parse_hosts([["h", 1], "unix:///tmp/r.sock", "rediss://h:2/0"], []) == [
        ("h", 1),
        "unix:///tmp/r.sock",
        "rediss://h:2/0",
    ]
    with pytest.raises(ValueError, match=r"not a single string.*hosts=\['redis://h'\]"):
        parse_hosts("redis://h", [])
    with pytest.raises(ValueError, match="hosts is empty"):
        parse_hosts([], [])
    for bad in ["http://h", ("h",), ("h", "6379"), ("h", 0), ("", 1), 5]:
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_host(bad)
