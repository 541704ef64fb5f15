"""Trust in control values: operator-signed envelopes and the node key registry.

Everything here is pure (no I/O): ``envelope`` seals and opens signed BH_CONFIG
values, ``registry`` keeps the operator-registered node keys with their history.
"""

from gatekeeper.control.envelope import (
    MAX_VALUE_BYTES,
    ControlValueRejected,
    Envelope,
    open_envelope,
    seal,
    signed_message,
)
from gatekeeper.control.registry import NODE_ID, NodeKeyEntry, NodeKeyRegistry, node_key_kv_key

__all__ = [
    "MAX_VALUE_BYTES",
    "NODE_ID",
    "ControlValueRejected",
    "Envelope",
    "NodeKeyEntry",
    "NodeKeyRegistry",
    "node_key_kv_key",
    "open_envelope",
    "seal",
    "signed_message",
]
