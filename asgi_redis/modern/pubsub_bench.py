"""``python -m asgi_redis.modern.pubsub_bench``, the documented command: it lives in asgi_redis.tools.pubsub_bench."""

import sys

from ..tools.pubsub_bench import main

if __name__ == "__main__":
    sys.exit(main())
