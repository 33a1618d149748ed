"""The loopback Redis Cluster of the tests (asgi_redis.tools.embedded_cluster, shared with the
cluster benchmark): started from the configured server binary, stopped by pid."""

from asgi_redis.tools.embedded_cluster import EmbeddedCluster as RedisCluster
from asgi_redis.tools.embedded_cluster import free_cluster_port

__all__ = ["RedisCluster", "free_cluster_port"]
