"""The layout keyword and registry (the layouts themselves are tested through the layers)."""

import pytest

from asgi_redis import RedisChannelLayer, RedisLocalChannelLayer, RedisSentinelChannelLayer
from asgi_redis.layouts import LAYOUTS, get_layout
from asgi_redis.layouts.base import Layout
from asgi_redis.layouts.classic import ClassicLayout


def test_classic_is_registered_and_the_default(layer):
    assert get_layout("classic") is ClassicLayout
    assert issubclass(ClassicLayout, Layout) and "classic" in LAYOUTS
    assert isinstance(layer.layout, ClassicLayout)
    assert isinstance(RedisChannelLayer(layout="classic").layout, ClassicLayout)


@pytest.mark.parametrize("bad", ["nope", "", None, 3, "Classic"])
def test_an_unknown_layout_is_a_value_error_naming_it_and_the_choices(bad):
    with pytest.raises(ValueError, match="classic") as raised:
        get_layout(bad)
    assert repr(bad) in str(raised.value)


@pytest.mark.parametrize("build", [
    lambda: RedisChannelLayer(layout="nope"),
    lambda: RedisSentinelChannelLayer(services=["one"], layout="nope"),
    lambda: RedisLocalChannelLayer(local_hosts=["redis://127.0.0.1:1"], layout="nope"),
], ids=["plain", "sentinel", "local"])
def test_every_layer_takes_the_layout_keyword(build):
    with pytest.raises(ValueError, match=r"layout must be one of \['classic'.*not 'nope'"):
        build()


def test_the_classic_layout_keys_are_1_4_3s(layer, raw):
    layer.send("chat!x", {"n": 1})
    layer.group_add("room", "chat!x")
    keys = sorted(key.decode() for key in raw.keys("*"))
    bodies = [key for key in keys if len(key) == len("asgi:") + 32]
    assert len(bodies) == 1 and raw.type(bodies[0]) == b"string"
    assert raw.lrange("asgi:chat!", 0, -1) == [bodies[0].encode()]
    assert raw.zrange("asgi::group:room", 0, -1) == [b"chat!x"]
    assert raw.get("asgi-meta:chat!:messages_count") == b"1"
    assert raw.get("asgi-meta:#global#:messages_count") == b"1"


def test_cluster_senders_follow_a_new_slot_map_to_a_normal_channels_new_bucket():
    # send keys are remembered per queue; a slot map change (a new primary bucket
    # list) must make the next send name the channel's queue in its new bucket
    from asgi_redis.cluster.layout import ClusterLayout
    from asgi_redis.layouts.base import LayoutSettings

    settings = LayoutSettings("asgi:", "asgi-meta:", 60, 86400, lambda queue: 100)
    primaries = [[]]
    layout = ClusterLayout(settings, buckets=4, primary_tags=lambda: primaries[0])
    first = layout.bucket_tags[0]
    primaries[0] = [first]
    [before] = layout.send_calls([("http.request", [b"x"])])
    assert before.keys[0] == layout.queue_key("http.request", first)
    primaries[0] = [layout.bucket_tags[1]]  # a resharding: another master's bucket now
    [after] = layout.send_calls([("http.request", [b"x"])])
    assert after.keys[0] == layout.queue_key("http.request", layout.bucket_tags[1])
