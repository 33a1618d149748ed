"""The ASGI 1.0 channel layer rules, apart from any transport.

Name checks, capacity lookup and message validation live here with no Redis
import, so they can be unit-tested alone and reused by other transports.
Every check raises ``TypeError``/``ValueError`` naming the offending value;
none uses ``assert``, which ``python -O`` would strip.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Dict, List, Mapping, Optional, Pattern, Tuple, Union

MAX_NAME_LENGTH = 100
RESERVED_KEY = "__asgi_channel__"

_CHANNEL_NAME = re.compile(r"^[a-zA-Z0-9\-_.]+([?!][a-zA-Z0-9\-_.]*)?$")
_GROUP_NAME = re.compile(r"^[a-zA-Z0-9\-_.]+$")

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
MAX_NESTING = 500  # msgpack refuses deeper structures; say so before it does


def _check_name_type(name: Any, kind: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, not {type(name).__name__}: {name!r}")
    if len(name) >= MAX_NAME_LENGTH:
        raise TypeError(
            f"{kind} name must be shorter than {MAX_NAME_LENGTH} characters, "
            f"got {len(name)}: {name[:40]!r}..."
        )


def validate_channel_name(name: Any, receive: bool = False) -> str:
    """Check a channel name for send (``receive=False``) or receive."""
    _check_name_type(name, "Channel")
    if not _CHANNEL_NAME.match(name):
        raise TypeError(
            f"Channel name {name!r} is invalid: use ASCII letters, digits, '-', '_' "
            "and '.', optionally one '?' or '!' followed by more of those"
        )
    if name.endswith("?"):
        raise TypeError(f"Channel name {name!r} ends with '?': that is a pattern for new_channel()")
    if receive and "!" in name and not name.endswith("!"):
        raise TypeError(
            f"Channel name {name!r}: receive() takes a process-specific channel "
            f"only up to and including the '!', i.e. {non_local_name(name)!r}"
        )
    return name


def validate_group_name(name: Any) -> str:
    _check_name_type(name, "Group")
    if not _GROUP_NAME.match(name):
        raise TypeError(
            f"Group name {name!r} is invalid: use only ASCII letters, digits, '-', '_' and '.'"
        )
    return name


def validate_channel_list(channels: Any) -> List[str]:
    """The channel list of receive(), checked and copied."""
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
        raise TypeError(f"channels must be a list of channel names, not {channels!r}")
    names = list(channels)
    for name in names:
        validate_channel_name(name, receive=True)
    return names


def validate_new_channel_pattern(pattern: Any, suffix_length: int) -> str:
    _check_name_type(pattern, "Channel pattern")
    if not pattern.endswith("?") or pattern.count("?") != 1 or "!" in pattern:
        raise TypeError(
            f"new_channel() pattern {pattern!r} must end with its only '?' "
            "(single-reader channels only)"
        )
    if not _GROUP_NAME.match(pattern[:-1]):
        raise TypeError(f"new_channel() pattern {pattern!r} has characters not allowed in names")
    if len(pattern) + suffix_length >= MAX_NAME_LENGTH:
        raise TypeError(
            f"new_channel() pattern {pattern!r} is too long: a name of it must stay "
            f"under {MAX_NAME_LENGTH} characters with a {suffix_length}-character suffix"
        )
    return pattern


def non_local_name(name: str) -> str:
    """``foo!abc`` -> ``foo!``; any other name is returned unchanged."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]


def is_directed(name: str) -> bool:
    """True for ``?`` and ``!`` channels, which live on one fixed shard."""
    return "?" in name or "!" in name


CapacityPattern = Union[str, Pattern[str]]


class CapacityTable:
    """Capacity of each channel: the first matching pattern wins, else the default.

    String keys are globs (fnmatch), compiled regexes are used as they are;
    order is the mapping's order, as in asgiref's BaseChannelLayer.
    """

    def __init__(self, default: int, patterns: Optional[Mapping[CapacityPattern, int]] = None):
        self.default = check_positive_int("capacity", default)
        self._rules: List[Tuple[Pattern[str], int]] = []
        if patterns is None:
            return
        if not isinstance(patterns, Mapping):
            raise ValueError(
                f"channel_capacity must be a dict of pattern -> capacity, not {patterns!r}"
            )
        for pattern, value in patterns.items():
            check_positive_int(f"channel_capacity[{pattern!r}]", value)
            if isinstance(pattern, str):
                compiled = re.compile(fnmatch.translate(pattern))
            elif hasattr(pattern, "match"):
                compiled = pattern
            else:
                raise ValueError(
                    f"channel_capacity key {pattern!r} must be a glob string or a compiled regex"
                )
            self._rules.append((compiled, value))

    @property
    def patterned(self) -> bool:
        """Whether some pattern overrides the default for some channels."""
        return bool(self._rules)

    def for_channel(self, name: str) -> int:
        """Capacity of ``name``; pass the non-local name for ``!`` channels."""
        for pattern, value in self._rules:
            if pattern.match(name):
                return value
        return self.default


def check_positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def check_positive_number(what: str, value: Any) -> Union[int, float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return value


class _BadValue(Exception):
    """Internal: carries the path down to the offending value."""

    def __init__(self, error: type, text: str):
        super().__init__(text)
        self.error = error
        self.text = text
        self.path: List[Any] = []


_SCALARS = (str, bytes, float, bool, type(None))


def _check_value(value: Any, depth: int) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise _BadValue(ValueError, f"integer {value} is outside the signed 64-bit range")
        return
    if depth > MAX_NESTING:
        raise _BadValue(ValueError, f"nesting deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _BadValue(
                    TypeError, f"dict key {key!r} is {type(key).__name__}; keys must be str"
                )
            try:
                _check_value(item, depth + 1)
            except _BadValue as bad:
                bad.path.append(key)
                raise
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            try:
                _check_value(item, depth + 1)
            except _BadValue as bad:
                bad.path.append(index)
                raise
    else:
        raise _BadValue(
            TypeError,
            f"holds a {type(value).__name__} ({value!r:.60}); allowed are dict, list, "
            "tuple, str, bytes, int, float, bool and None",
        )


def validate_message(message: Any) -> Dict[str, Any]:
    """Check that ``message`` is a sendable ASGI message; return it unchanged."""
    if not isinstance(message, dict):
        raise TypeError(f"message must be a dict, not {type(message).__name__}: {message!r:.80}")
    if RESERVED_KEY in message:
        raise ValueError(f"message key {RESERVED_KEY!r} is reserved for the channel layer")
    try:
        _check_value(message, 0)
    except _BadValue as bad:
        where = "".join(f"[{step!r}]" for step in reversed(bad.path))
        raise bad.error(f"message{where} {bad.text}") from None
    return message
