"""The channel layer object daphne is pointed at (``c1app.asgi:channel_layer``)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "c1app.settings")

from channels.asgi import get_channel_layer  # noqa: E402

channel_layer = get_channel_layer()
