"""``python -m asgi_redis``: the operations command line (see asgi_redis.tools.cli)."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
