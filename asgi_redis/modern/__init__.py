"""Synchronous producers for Channels 3/4 deployments backed by channels_redis 4.

``SyncChannelsRedisClient`` writes the Redis format of channels_redis 4.x so
its unmodified consumers receive what Django views, Celery tasks or cron jobs
send, without ``async_to_sync`` and without an event loop.
"""

from .client import ChannelFull, SyncChannelsRedisClient

__all__ = ["SyncChannelsRedisClient", "ChannelFull"]
