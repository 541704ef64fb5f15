"""State-based CRDT counters. Pure: no I/O, nothing imported from ``gatekeeper``.

- :class:`GCounter`  grow-only, one slot per node, value = sum, merge = per-slot max
- :class:`PNCounter` two G-Counters (P - N); a node's slot is a :class:`PNSlot`
- :class:`EscrowCounter` bounded counter: nodes spend only rights they hold
"""

from gatekeeper.internal.crdt.escrow import EscrowCounter
from gatekeeper.internal.crdt.gcounter import GCounter
from gatekeeper.internal.crdt.pncounter import PNCounter, PNSlot

__all__ = ["EscrowCounter", "GCounter", "PNCounter", "PNSlot"]
