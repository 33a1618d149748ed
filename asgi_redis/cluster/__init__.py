"""Redis Cluster support: hash slots, the slot map, and routing calls to the node that owns them.

``keyslot`` hashes keys as the cluster does, ``slotmap`` reads who owns
which slot, ``nodes`` holds the startup nodes and one pooled client per node,
``router`` sends each call (and one pipeline per node) where it belongs and
follows MOVED / ASK / TRYAGAIN without ever repeating a call that may have run.
"""

from .keyslot import SLOT_COUNT, crc16, hash_tag, key_slot
from .router import Call, ClusterRouter, NotACluster, call_slot
from .slotmap import SlotMap

__all__ = ["SLOT_COUNT", "Call", "ClusterRouter", "NotACluster", "SlotMap", "call_slot", "crc16",
           "hash_tag", "key_slot"]
