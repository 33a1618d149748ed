"""Runs operations on asgi_redis 1.4.3 in its own interpreter (see test_compat.py).

stdin: pickle of (layer keywords, [(method name, args), ...]);
stdout: pickle of the list of results (an exception becomes ("raised", class name)).
Imports only the legacy library, never this project's package.
"""

import pickle
import sys

import asgi_redis


def main():
    config, operations = pickle.load(sys.stdin.buffer)
    layer = asgi_redis.RedisChannelLayer(**config)
    results = []
    for name, args in operations:
        try:
            results.append(getattr(layer, name)(*args))
        except Exception as error:  # reported back, the test decides
            results.append(("raised", type(error).__name__))
    sys.stdout.buffer.write(pickle.dumps(results, protocol=2))


if __name__ == "__main__":
    main()
