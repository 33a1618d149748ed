"""``python -m asgi_redis``: the operations command line (see asgi_redis.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
