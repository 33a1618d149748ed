"""asgi_redis.keyspace: glob escaping and bounded SCAN batches, on a real server."""

import pytest

from asgi_redis.keyspace import glob_escape, scan_batches


def test_glob_escape_matches_only_itself(raw):
    prefix = "ks-esc:[a]*?\\:"
    raw.set(prefix + "x", 1)
    raw.set("ks-esc:a" + "x", 1)  # what the unescaped pattern would also match
    try:
        found = [key for keys in scan_batches(raw, glob_escape(prefix) + "*") for key in keys]
        assert found == [(prefix + "x").encode()]
    finally:
        raw.delete(prefix + "x", "ks-esc:ax")


def test_glob_escape_leaves_plain_text():
    assert glob_escape("asgi:") == "asgi:"
    assert glob_escape("a*b?c[d]e\\") == "a\\*b\\?c\\[d\\]e\\\\"


@pytest.fixture
def many_keys(raw):
    keys = [f"ks-many:{i}" for i in range(250)]
    raw.mset({key: 1 for key in keys})
    yield keys
    raw.delete(*keys)


def test_batches_are_bounded_and_complete(raw, many_keys):
    batches = list(scan_batches(raw, "ks-many:*", batch=40))
    assert all(1 <= len(keys) <= 40 for keys in batches)
    assert all(len(keys) == 40 for keys in batches[:-1])
    assert {key.decode() for keys in batches for key in keys} == set(many_keys)


def test_key_budget_stops_the_walk(raw, many_keys, round_trips):
    batches = list(scan_batches(raw, "ks-many:*", batch=30, key_budget=70))
    assert [len(keys) for keys in batches] == [30, 30, 10]
    # it stopped early: far fewer SCAN calls than walking all 250 keys would take
    assert round_trips.count < 250 // 30
    assert list(scan_batches(raw, "ks-many:*", key_budget=0)) == []


@pytest.mark.parametrize("bad", [{"batch": 0}, {"key_budget": -1}])
def test_bad_arguments_name_the_value(raw, bad):
    with pytest.raises(ValueError, match=str(list(bad.values())[0])):
        list(scan_batches(raw, "*", **bad))
