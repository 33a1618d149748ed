"""Message bodies: msgpack as asgi_redis 1.4.3 wrote them, optionally Fernet-encrypted.

A serializer is any object with ``encode(message) -> bytes`` and
``decode(bytes) -> message``; the layer never looks inside the bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Dict, Iterable, List, Union

import msgpack

Key = Union[str, bytes]


class UndecodableMessage(Exception):
    """A stored body could not be decoded (corrupt, truncated, wrong key, too old)."""


class MsgpackSerializer:
    """msgpack with ``use_bin_type`` so bytes stay bytes and str stays str."""

    def encode(self, message: Dict[str, Any]) -> bytes:
        try:
            return msgpack.packb(message, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as error:
            # spec.validate_message catches these first; this is the backstop
            raise TypeError(f"message cannot be encoded: {error}") from None

    def encode_naming(self, message: Dict[str, Any], key: str, values: List[str]) -> List[bytes]:
        """``encode({**message, key: value})`` for each value, packing ``message`` once.

        A msgpack map is a count followed by its entries, so the shared entries
        are reused and only the count and the last entry differ. send_group to
        a thousand sockets otherwise spends most of its time re-packing."""
        packed = self.encode(message)
        shared = msgpack.Packer().pack_map_header(len(message) + 1)
        shared += packed[_map_header_length(packed):] + msgpack.packb(key)
        return [shared + msgpack.packb(value) for value in values]

    def decode(self, data: bytes) -> Dict[str, Any]:
        try:
            # Extension types are no ASGI value: refuse them rather than hand the
            # worker an ExtType. msgpack's standard timestamp (a foreign producer's
            # time value) arrives as a float of unix seconds, like time.time().
            message = msgpack.unpackb(
                data, raw=False, ext_hook=_refuse_extension, timestamp=1, object_hook=_str_keys_only
            )
        except Exception as error:  # msgpack raises a zoo of types on bad input
            raise UndecodableMessage(f"body is not valid msgpack ({type(error).__name__})") from None
        if not isinstance(message, dict):
            raise UndecodableMessage(f"body decodes to a {type(message).__name__}, not a dict")
        return message


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not an allowed message value")


def _str_keys_only(mapping: Dict[Any, Any]) -> Dict[str, Any]:
    # a body with bytes or int keys came from no ASGI sender; the worker would choke on it
    for key in mapping:
        if type(key) is not str:
            raise ValueError("a dict key is not a str")
    return mapping


def _map_header_length(packed: bytes) -> int:
    first = packed[0]
    if 0x80 <= first <= 0x8F:  # fixmap
        return 1
    return {0xDE: 3, 0xDF: 5}[first]  # map 16, map 32


def fernet_key(key: Key) -> bytes:
    """The Fernet key 1.4.3 derived from a configured key: urlsafe-b64(sha256(key))."""
    if isinstance(key, str):
        key = key.encode("utf8")
    return base64.urlsafe_b64encode(hashlib.sha256(key).digest())


class EncryptedSerializer:
    """Wraps another serializer in a MultiFernet: the first key encrypts, all decrypt."""

    def __init__(self, inner: Any, keys: Iterable[Key], ttl: int):
        try:
            from cryptography.fernet import Fernet, InvalidToken, MultiFernet
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "symmetric_encryption_keys needs the 'cryptography' package: "
                "pip install 'asgi_redis[cryptography]'"
            ) from None
        keys = check_encryption_keys(keys)
        self._inner = inner
        self._fernet = MultiFernet([Fernet(fernet_key(key)) for key in keys])
        self._invalid_token = InvalidToken
        self._ttl = ttl

    def encode(self, message: Dict[str, Any]) -> bytes:
        return self._fernet.encrypt(self._inner.encode(message))

    def encode_naming(self, message: Dict[str, Any], key: str, values: List[str]) -> List[bytes]:
        """Each body is encrypted on its own (a token is bound to its plaintext)."""
        inner = getattr(self._inner, "encode_naming", None)
        if inner is not None:
            plains = inner(message, key, values)
        else:
            plains = [self._inner.encode({**message, key: value}) for value in values]
        return [self._fernet.encrypt(plain) for plain in plains]

    def decode(self, data: bytes) -> Dict[str, Any]:
        try:
            plain = self._fernet.decrypt(data, ttl=self._ttl)
        except self._invalid_token:
            raise UndecodableMessage(
                "body could not be decrypted: unknown key, tampered, or older than "
                f"the decrypt TTL of {self._ttl} s"
            ) from None
        return self._inner.decode(plain)


def check_encryption_keys(keys: Any) -> List[Key]:
    if isinstance(keys, (str, bytes)):
        raise ValueError(
            "symmetric_encryption_keys must be a list of keys, not a single "
            f"{type(keys).__name__}; write [{keys[:4]!r}...] instead"
        )
    try:
        keys = list(keys)
    except TypeError:
        raise ValueError(f"symmetric_encryption_keys must be a list of keys, not {keys!r}") from None
    if not keys:
        raise ValueError("symmetric_encryption_keys is an empty list; give at least one key")
    for key in keys:
        if not isinstance(key, (str, bytes)) or not key:
            raise ValueError(
                f"each of symmetric_encryption_keys must be a non-empty str or bytes, "
                f"not {type(key).__name__}"
            )
    return keys
