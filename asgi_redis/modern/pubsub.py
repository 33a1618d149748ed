"""A synchronous producer for channels_redis's pub/sub layer.

On ``channels_redis.pubsub.RedisPubSubChannelLayer`` a send and a group send
are each one ``PUBLISH`` on the right server, so a Django view, a Celery task
or a cron job needs neither ``async_to_sync`` nor an event loop to reach its
consumers. What is published matches the layer byte for byte (see
:mod:`asgi_redis.modern.pubsub_wire`).

The layer's semantics carry over unchanged: Redis pub/sub stores nothing, so
a message reaches the consumers subscribed at the moment it is published, at
most once, and a message nobody is subscribed to is gone. Group membership
lives in the memory of each consuming process; a producer cannot change it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from . import wire
from .hosts import HostClients, decode_hosts, make_client
from .pubsub_wire import PubSubCodec, group_channel, server_of
from .settings import Producer, producer_from_settings


class GroupMembershipError(RuntimeError):
    """Group membership cannot be changed from outside the consuming process.

    A ``RuntimeError``, as the pub/sub layer's own ``group_add`` raises for a
    channel that is not in its process.
    """


class SyncPubSubClient(HostClients):
    """Publish to channels and groups of ``RedisPubSubChannelLayer`` from sync code.

    Takes that layer's keywords (or use :meth:`from_settings` on the same
    ``CHANNEL_LAYERS`` entry). Names must be valid Channels names, as on
    every other layer (the pub/sub layer itself does not check), so code that
    works here keeps working after a switch; a channel name may also be the
    prefix followed by a valid name, as the layer's ``new_channel`` makes them. Safe to share between threads;
    after a fork the connection pools reconnect by themselves.
    """

    _lost_reply = "a timed-out publish may or may not have been delivered"

    def __init__(
        self,
        hosts: Optional[Sequence[Union[str, tuple, Dict[str, Any]]]] = None,
        prefix: str = "asgi",
        symmetric_encryption_keys: Optional[Sequence[Union[str, bytes]]] = None,
        serializer_format: str = "msgpack",
    ):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {prefix!r}")
        self.prefix = prefix
        self.hosts = decode_hosts(hosts)
        self._codec = PubSubCodec(serializer_format, symmetric_encryption_keys)
        # make_client gives the layers' at-most-once retry policy: a PUBLISH whose
        # reply was lost may already have been delivered, and is never sent twice
        self._clients = [make_client(entry) for entry in self.hosts]

    @classmethod
    def from_settings(cls, alias: str = "default",
                      channel_layers: Optional[Mapping[str, Any]] = None) -> Producer:
        """The producer for ``CHANNEL_LAYERS[alias]``, whichever channels_redis layer it names.

        The same as :meth:`SyncChannelsRedisClient.from_settings`: the
        ``BACKEND`` decides, so the producer code never changes with it.
        """
        return producer_from_settings(alias, channel_layers)

    # -- the channel layer API, synchronous ---------------------------------

    def send(self, channel: str, message: Dict[str, Any]) -> int:
        """Publish ``message`` on ``channel``. One round trip.

        Returns how many subscriptions received it: a consumer process
        listening on the channel counts once; ``0`` means nobody was
        listening and the message is gone, as on the layer itself.
        """
        self._check_channel_name(channel)
        body = self._encode(message)
        return self._publish(channel, body)

    def group_send(self, group: str, message: Dict[str, Any]) -> int:
        """Publish ``message`` to ``group``. One round trip.

        Returns how many consumer processes received it (each delivers it to
        its own member channels); ``0`` means the group has no member anywhere.
        """
        wire.check_group_name(group)
        body = self._encode(message)
        return self._publish(group_channel(self.prefix, group), body)

    def group_add(self, group: str, channel: str) -> None:
        """Always raises :class:`GroupMembershipError`: see its message."""
        self._refuse_membership("group_add", group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        """Always raises :class:`GroupMembershipError`: see its message."""
        self._refuse_membership("group_discard", group, channel)

    def flush(self) -> None:
        """Drop the pooled connections, as the layer's ``flush`` does.

        The pub/sub layer stores nothing in Redis, so there is nothing to
        delete; the client reconnects if used again.
        """
        self.close()

    # -- internals ------------------------------------------------------------

    def _check_channel_name(self, channel: Any) -> None:
        # The layer's new_channel() names are prefix + "specific." + hex, so a
        # prefix such as "myapp:" puts characters Channels' rules refuse into
        # them; such a name is valid when what follows the prefix is.
        prefix = self.prefix
        if isinstance(channel, str) and prefix and channel.startswith(prefix) and len(channel) > len(prefix):
            try:
                wire.check_channel_name(channel[len(prefix):])
                return
            except TypeError:
                pass
        wire.check_channel_name(channel)

    def _encode(self, message: Any) -> bytes:
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        return self._codec.encode(message)

    def _publish(self, name: str, body: bytes) -> int:
        index = server_of(name, len(self._clients))
        with self._host(index) as client:
            return int(client.publish(name, body))

    def _refuse_membership(self, method: str, group: str, channel: str) -> None:
        wire.check_group_name(group)
        self._check_channel_name(channel)
        raise GroupMembershipError(
            f"{method}({group!r}, {channel!r}) cannot be done from a producer on "
            "channels_redis's pub/sub layer: a group's members live in the memory of the "
            "consumer process that owns each channel, not in Redis. Call "
            f"self.channel_layer.{method}({group!r}, self.channel_name) in that consumer, "
            "or send it a message whose handler does."
        )
