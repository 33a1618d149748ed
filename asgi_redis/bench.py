"""``python -m asgi_redis.bench``, the documented command: the benchmark lives in asgi_redis.tools.bench."""

import sys

from .tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
