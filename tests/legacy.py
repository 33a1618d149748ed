"""A virtualenv holding the original asgi_redis 1.4.3, to prove wire compatibility.

It is built once per interpreter version (redis-py 2.10 and msgpack < 1.0,
the pins of 1.4.3) under .tox/legacy-1.4.3/, or taken from
$ASGI_REDIS_LEGACY_PYTHON.
"""

import hashlib
import os
import pickle
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
# setuptools: redis 2.10 imports distutils, gone from the standard library in 3.12
PINS = ["asgi_redis==1.4.3", "redis==2.10.6", "msgpack<1.0", "asgiref==1.1.2", "six", "cryptography", "setuptools"]


def legacy_python():
    explicit = os.environ.get("ASGI_REDIS_LEGACY_PYTHON")
    if explicit:
        return explicit
    version = "py{}{}".format(*sys.version_info[:2])
    home = os.path.join(os.path.dirname(HERE), ".tox", "legacy-1.4.3", version)
    python = os.path.join(home, "bin", "python")
    marker = os.path.join(home, "installed-" + hashlib.sha1(" ".join(PINS).encode()).hexdigest()[:12])
    if not os.path.exists(marker):
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        open(marker, "w").close()
    return python


class LegacyLayer:
    """Runs batches of layer calls on asgi_redis 1.4.3 in a subprocess."""

    def __init__(self, python, **config):
        self.python = python
        self.config = config

    def run(self, *operations):
        completed = subprocess.run(
            [self.python, os.path.join(HERE, "legacy_driver.py")],
            input=pickle.dumps((self.config, list(operations)), protocol=2),
            capture_output=True,
            timeout=60,
            env=_legacy_environment(),
        )
        if completed.returncode != 0:
            raise RuntimeError(completed.stderr.decode(errors="replace")[-2000:])
        return pickle.loads(completed.stdout)


def _legacy_environment():
    # A PYTHONPATH pointing at this checkout would make the legacy interpreter
    # import our package instead of 1.4.3's
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
