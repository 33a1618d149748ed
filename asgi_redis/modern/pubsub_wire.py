"""What channels_redis 4.3's pub/sub layer publishes, with no Redis import.

``channels_redis.pubsub.RedisPubSubChannelLayer`` keeps nothing in Redis.
Read from its 4.3 source and checked against it by tests/test_modern_pubsub.py:

* ``send(channel, message)`` is ``PUBLISH channel body``: the name exactly as
  given (no prefix; a ``"specific.abc!xyz"`` name is an ordinary Redis channel
  name, which the consumer subscribes to in full), on the server
  ``crc32(name) & 0xFFF`` scaled to the host count, hashed on the full name;
* ``group_send(group, message)`` is ``PUBLISH prefix + "__group__" + group
  body`` on the server of that name. Each consumer process subscribes once to
  a group's channel and fans the message out to its member channels in memory;
* the body is ``msgpack.packb(message)`` (or the JSON text in UTF-8), then,
  when keys are configured, ``MultiFernet.encrypt`` with the first key
  (``urlsafe_b64(sha256(key))``). No random prefix, no ``__asgi_channel__``;
  the consumer decrypts without a time limit.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

from .wire import decode_plain, encode_plain, multi_fernet, registered_serializer, shard_of

GROUP_INFIX = "__group__"


def group_channel(prefix: str, group: str) -> str:
    """The Redis pub/sub channel a group's messages travel on."""
    return f"{prefix}{GROUP_INFIX}{group}"


def server_of(name: str, server_count: int) -> int:
    """The host index channels_redis's ``_consistent_hash`` gives ``name``."""
    return shard_of(name, server_count)


class PubSubCodec:
    """Encodes a message the way the pub/sub layer's serializer does.

    ``"msgpack"`` and ``"json"`` are built in, so a producer needs no
    channels_redis; any other name is taken from channels_redis's serializer
    registry, built with the same arguments the layer passes it.
    """

    def __init__(self, serializer_format: str = "msgpack",
                 symmetric_encryption_keys: Optional[Sequence[Union[str, bytes]]] = None):
        self.format = serializer_format
        self._registered = None
        self._fernet = None
        if serializer_format not in ("msgpack", "json"):
            # exactly the arguments RedisPubSubChannelLayer passes
            self._registered = registered_serializer(
                serializer_format, symmetric_encryption_keys=symmetric_encryption_keys)
        elif symmetric_encryption_keys:  # the layer treats None and [] alike: no encryption
            self._fernet = multi_fernet(symmetric_encryption_keys)

    @property
    def encrypted(self) -> bool:
        return self._fernet is not None

    def encode(self, message: Dict[str, Any]) -> bytes:
        if self._registered is not None:
            return self._registered.serialize(message)
        body = encode_plain(self.format, message)
        return body if self._fernet is None else self._fernet.encrypt(body)

    def decode(self, body: bytes) -> Dict[str, Any]:
        """The inverse of :meth:`encode`, for tests and inspection."""
        if self._registered is not None:
            return self._registered.deserialize(body)
        if self._fernet is not None:
            body = self._fernet.decrypt(body)
        return decode_plain(self.format, body)
