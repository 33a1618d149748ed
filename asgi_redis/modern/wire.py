"""The Redis layout that channels_redis 4.x reads, with no Redis import.

What channels_redis 4.3 writes (observed in Redis, matching its docs):

* a channel is a sorted set at ``prefix + name`` (no separator); for a
  process-specific channel ``"specific.abc!xyz"`` the key holds only the part
  up to and including the ``!`` and the full name travels inside the message
  as ``__asgi_channel__`` (a string from ``send``, a list from ``group_send``);
* each member is ``random prefix (12 bytes) + body``, scored by the sender's
  ``time.time()``; the body is msgpack (or JSON), optionally Fernet-encrypted
  with the key ``urlsafe_b64(sha256(key))``. The random prefix only keeps
  equal bodies from collapsing into one sorted-set member;
* a group is a sorted set at ``prefix + ":group:" + name`` of channel names,
  scored by the time they were added;
* a name lives on shard ``crc32(name) & 0xFFF`` scaled to the host count.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Pattern, Tuple, Union

import msgpack

from ..connections import shard_index
from ..serializers import check_encryption_keys, fernet_key
from ..spec import RESERVED_KEY, non_local_name

# What is shared with the ASGI 1.0 side (spec.py) is imported from there:
# non_local_name (the same "up to and including '!'" rule), the reserved
# field name, and capacity patterns (spec.CapacityTable: the same "first
# matching glob or regex wins"; channels_redis matches the *full* channel
# name, so client.py passes that). Name checks stay here: channels 4 allows
# no '?' channels and '\w' (any Unicode word character) after the '!', and
# its error texts differ; group names follow the same rule as spec.py's but
# keep channels' wording, which callers match on.

CHANNEL_FIELD = RESERVED_KEY
MAX_NAME_LENGTH = 100  # channels.layers.BaseChannelLayer: names must be shorter
_CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")

__all__ = ["non_local_name", "CHANNEL_FIELD", "MessageCodec"]


def check_channel_name(name: Any) -> str:
    return _check_name("channel", name, _CHANNEL_NAME, ", with an optional '!' part")


def check_group_name(name: Any) -> str:
    return _check_name("group", name, _GROUP_NAME)


def _check_name(kind: str, name: Any, pattern: Pattern[str], also: str = "") -> str:
    # callers match on these texts: the wording stays as it is
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not pattern.match(name):
        raise TypeError(
            f"{kind} name {name!r:.120} is invalid: it must be a str shorter than {MAX_NAME_LENGTH} "
            f"characters of ASCII letters, digits, '-', '_' and '.'{also}"
        )
    return name


def channel_key(prefix: str, channel: str) -> str:
    return prefix + non_local_name(channel)


def group_key(prefix: str, group: str) -> str:
    # channels_redis's own key; it happens to equal the classic layout's group
    # key, but belongs to another product's layout, so it is not borrowed from there
    return f"{prefix}:group:{group}"


def shard_of(name: str, shard_count: int) -> int:
    # The same bucket arithmetic as asgi_redis 1.4.3 and channels_redis.
    return 0 if shard_count == 1 else shard_index(name, shard_count)


class MessageCodec:
    """Turns a message dict into the sorted-set member channels_redis decodes.

    ``serializer_format`` is ``"msgpack"`` or ``"json"``; any other name is
    looked up in channels_redis's own serializer registry when it is
    installed, so a project that registered its own format keeps it.
    """

    def __init__(self, serializer_format: str = "msgpack",
                 symmetric_encryption_keys: Optional[List[Union[str, bytes]]] = None,
                 random_prefix_length: int = 12, expiry: int = 60):
        if isinstance(random_prefix_length, bool) or not isinstance(random_prefix_length, int) \
                or random_prefix_length < 0:
            raise ValueError(f"random_prefix_length must be an int >= 0, not {random_prefix_length!r}")
        self.format = serializer_format
        self.random_prefix_length = random_prefix_length
        self.expiry = expiry
        self._foreign = None
        if serializer_format not in ("msgpack", "json"):
            # the keywords channels_redis's core layer passes
            self._foreign = registered_serializer(
                serializer_format, symmetric_encryption_keys=symmetric_encryption_keys,
                random_prefix_length=random_prefix_length, expiry=expiry)
        self._fernet = multi_fernet(symmetric_encryption_keys) if symmetric_encryption_keys else None

    @property
    def encrypted(self) -> bool:
        return self._fernet is not None

    @property
    def splicable(self) -> bool:
        """Whether Redis itself can append ``__asgi_channel__`` to an encoded body
        (plain msgpack or JSON only: it cannot encrypt)."""
        return self._fernet is None and self._foreign is None

    def encode(self, message: Dict[str, Any]) -> bytes:
        if self._foreign is not None:
            return self._foreign.serialize(message)
        body = encode_plain(self.format, message)
        if self._fernet is not None:
            body = self._fernet.encrypt(body)
        return self.nonce() + body

    def decode(self, member: bytes) -> Dict[str, Any]:
        """The inverse of :meth:`encode`, for tests and inspection tools."""
        if self._foreign is not None:
            return self._foreign.deserialize(member)
        body = member[self.random_prefix_length:]
        if self._fernet is not None:
            body = self._fernet.decrypt(body)
        return decode_plain(self.format, body)

    def nonce(self) -> bytes:
        return os.urandom(self.random_prefix_length)

    def splice_parts(self, message: Dict[str, Any]) -> Tuple[bytes, bytes]:
        """``(head, tail)`` such that ``head + encoded_list + tail`` is the body of
        ``message`` with ``__asgi_channel__`` set to that list.

        The field goes last with a null value; cutting the null off leaves the
        head, so the Lua script only has to encode a list of names.
        """
        with_field = dict(message)
        with_field[CHANNEL_FIELD] = None
        body = encode_plain(self.format, with_field)
        if self.format == "msgpack":
            return body[:-1], b""  # msgpack nil is the single byte 0xc0
        return body[: -len(b"null}")], b"}"


# What the core and the pub/sub layer's bodies share (pubsub_wire.py uses these
# too): the plain msgpack or JSON encoding, the Fernet keys, the serializer registry.

def encode_plain(serializer_format: str, message: Dict[str, Any]) -> bytes:
    """``message`` as channels_redis's built-in msgpack or JSON serializer encodes it."""
    try:
        if serializer_format == "msgpack":
            return msgpack.packb(message)
        return json.dumps(message).encode("utf-8")
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(f"message cannot be encoded as {serializer_format}: {error}") from None


def decode_plain(serializer_format: str, body: bytes) -> Dict[str, Any]:
    """The inverse of :func:`encode_plain`."""
    return msgpack.unpackb(body) if serializer_format == "msgpack" else json.loads(body)


def multi_fernet(keys: Any) -> Any:
    """The ``MultiFernet`` channels_redis builds from ``symmetric_encryption_keys``."""
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "symmetric_encryption_keys needs the 'cryptography' package: pip install cryptography"
        ) from None
    return MultiFernet([Fernet(fernet_key(key)) for key in check_encryption_keys(keys)])


def registered_serializer(name: Any, **layer_arguments: Any) -> Any:
    """channels_redis's registered serializer ``name``, built with ``layer_arguments``:
    exactly the keywords the layer being matched passes it."""
    try:
        from channels_redis.serializers import registry
    except ImportError:
        registry = None
    if registry is None or not isinstance(name, str):
        raise ValueError(f"serializer_format {name!r} is unknown: use 'msgpack' or 'json'")
    try:
        return registry.get_serializer(name, **layer_arguments)
    except KeyError:
        raise ValueError(f"serializer_format {name!r} is not registered with channels_redis") from None
