"""Exceptions raised by the channel layers.

Every layer-specific failure derives from :class:`ChannelLayerError`, so a
worker loop can catch the whole family in one clause.  Bad arguments are the
built-in :class:`TypeError` / :class:`ValueError`, as Python users expect.
"""

from __future__ import annotations


class ChannelLayerError(Exception):
    """Base class of every error the asgi_redis layers raise themselves."""


class ChannelFull(ChannelLayerError):
    """The channel already holds its capacity of messages; nothing was queued."""


class MessageTooLarge(ChannelLayerError):
    """The encoded message is larger than the layer's ``max_message_size``."""


class LayerConnectionError(ChannelLayerError, ConnectionError):
    """A Redis server could not be reached or stopped answering.

    It is also a :class:`ConnectionError`, and its ``__cause__`` is the
    redis-py exception, so callers that already catch either keep working.
    """
