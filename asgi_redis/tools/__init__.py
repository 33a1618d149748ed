"""The tooling around the layer: the ``asgi-redis`` command line and its options,
the benchmark, the demo, keyspace inspection and the throwaway embedded server.

The library (``asgi_redis`` and its other subpackages) never imports from here.
"""
