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

import json
from typing import Any, Dict, Optional, Sequence, Union

import msgpack

from ..connections import shard_index
from ..serializers import check_encryption_keys, fernet_key

GROUP_INFIX = "__group__"


def group_channel(prefix: str, group: str) -> str:
    """The Redis pub/sub channel a group's messages travel on."""
    return f"{prefix}{GROUP_INFIX}{group}"


def server_of(name: str, server_count: int) -> int:
    """The host index channels_redis's ``_consistent_hash`` gives ``name``."""
    return 0 if server_count == 1 else shard_index(name, server_count)


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
            self._registered = _registered_serializer(serializer_format, symmetric_encryption_keys)
        elif symmetric_encryption_keys:  # the layer treats None and [] alike: no encryption
            self._fernet = _multi_fernet(symmetric_encryption_keys)

    @property
    def encrypted(self) -> bool:
        return self._fernet is not None

    def encode(self, message: Dict[str, Any]) -> bytes:
        if self._registered is not None:
            return self._registered.serialize(message)
        try:
            if self.format == "msgpack":
                body = msgpack.packb(message)
            else:
                body = json.dumps(message).encode("utf-8")
        except (TypeError, ValueError, OverflowError) as error:
            raise TypeError(f"message cannot be encoded as {self.format}: {error}") from None
        return body if self._fernet is None else self._fernet.encrypt(body)

    def decode(self, body: bytes) -> Dict[str, Any]:
        """The inverse of :meth:`encode`, for tests and inspection."""
        if self._registered is not None:
            return self._registered.deserialize(body)
        if self._fernet is not None:
            body = self._fernet.decrypt(body)
        return msgpack.unpackb(body) if self.format == "msgpack" else json.loads(body)


def _multi_fernet(keys: Any) -> Any:
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "symmetric_encryption_keys needs the 'cryptography' package: pip install cryptography"
        ) from None
    return MultiFernet([Fernet(fernet_key(key)) for key in check_encryption_keys(keys)])


def _registered_serializer(name: Any, keys: Any) -> Any:
    try:
        from channels_redis.serializers import registry
    except ImportError:
        registry = None
    if registry is None or not isinstance(name, str):
        raise ValueError(f"serializer_format {name!r} is unknown: use 'msgpack' or 'json'")
    try:
        # exactly the arguments RedisPubSubChannelLayer passes
        return registry.get_serializer(name, symmetric_encryption_keys=keys)
    except KeyError:
        raise ValueError(f"serializer_format {name!r} is not registered with channels_redis") from None
