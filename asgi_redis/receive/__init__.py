"""The receive engine: how one ``receive`` finds a message across servers.

* ``plan.py`` - the I/O-free plan (a generator of Redis calls, "steps");
* ``driver.py`` - the one driver of a plan, and the blocking / asyncio step runners;
* ``waiting.py`` - one BLPOP on several servers at once, first answer wins;
* ``engine.py`` - the one place deciding how a receive is carried out;
* ``port.py`` - the interface the engine needs from a layer (:class:`LayerPort`);
* ``quirks.py`` - what it learns about the servers (:class:`ServerQuirks`).

The engine names no key and no script: the layer's key layout does.
"""

from .engine import Receive
from .port import LayerPort
from .quirks import ServerQuirks

__all__ = ["Receive", "LayerPort", "ServerQuirks"]
