"""Settings of the Channels 1 end-to-end project.

The test passes the Redis hosts (comma-separated URLs), a key prefix and a
directory for file-backed sessions (channel_session must be shared by the
worker processes) through the environment.
"""
import os

SECRET_KEY = "channels1-e2e-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "c1app.urls"
INSTALLED_APPS = ["channels", "c1app"]
MIDDLEWARE = []
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True

SESSION_ENGINE = "django.contrib.sessions.backends.file"
SESSION_FILE_PATH = os.environ.get("E2E_SESSION_DIR") or None

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgi_redis.RedisChannelLayer",
        "ROUTING": "c1app.routing.channel_routing",
        "CONFIG": {
            "hosts": os.environ.get("E2E_REDIS_HOSTS", "redis://127.0.0.1:6379").split(","),
            "prefix": os.environ.get("E2E_PREFIX", "asgi:"),
            "capacity": 1000,
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # INFO: the test waits for daphne's and runworker's start-up lines
    "root": {"handlers": ["console"], "level": "INFO"},
}
