"""Redis-backed ASGI 1.0 channel layer for Django Channels 1.x, daphne 1.x and runworker.

A maintained, drop-in successor of asgi_redis 1.4.3 that keeps its Redis
data layout, so old and new processes can share one Redis.
"""

from .cluster.layer import RedisClusterChannelLayer
from .core import RedisChannelLayer
from .errors import ChannelFull, ChannelLayerError, LayerConnectionError, MessageTooLarge
from .local import RedisLocalChannelLayer
from .sentinel import RedisSentinelChannelLayer

__version__ = "2.0.0"

__all__ = [
    "RedisChannelLayer",
    "RedisSentinelChannelLayer",
    "RedisLocalChannelLayer",
    "RedisClusterChannelLayer",
    "ChannelLayerError",
    "ChannelFull",
    "MessageTooLarge",
    "LayerConnectionError",
    "__version__",
]
