"""``python -m asgi_redis.modern.bench``, the documented command: it lives in asgi_redis.tools.modern_bench."""

import sys

from ..tools.modern_bench import main

if __name__ == "__main__":
    sys.exit(main())
