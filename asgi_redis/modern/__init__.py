"""Synchronous producers for Channels 3/4 deployments backed by channels_redis 4.

``SyncChannelsRedisClient`` writes the Redis format of channels_redis 4.x's
core layer, ``SyncPubSubClient`` publishes what its pub/sub layer publishes,
so their unmodified consumers receive what Django views, Celery tasks or cron
jobs send, without ``async_to_sync`` and without an event loop.
``SyncChannelsRedisClient.from_settings(alias)`` picks the right one from the
``BACKEND`` of the alias.
"""

from .client import ChannelFull, SyncChannelsRedisClient
from .pubsub import GroupMembershipError, SyncPubSubClient
from .settings import register_producers

register_producers(SyncChannelsRedisClient, SyncPubSubClient)

__all__ = ["SyncChannelsRedisClient", "SyncPubSubClient", "ChannelFull", "GroupMembershipError"]
