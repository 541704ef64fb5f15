"""Node-signed events: breaker changes, health reports and alerts a peer may act on.

The payload stays the JSON object readers already know, with two fields added::

    {..., "node_id": "<node>", "ts": <unix>, "kid": "<k4.pid of the node key>", "sig": "…"}

``sig`` is Ed25519 over ``b"gatekeeper.event.v1\\n" + subject + b"\\n"`` followed by
the sorted-key JSON of every other field, by the node's current registered key.
``open_event`` accepts it only if the signer is registered for exactly the
``node_id`` it claims, the subject is the one it was signed for, and ``ts`` is
recent (a recorded event replayed later is refused). Pure: no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.registry import NodeKeyRegistry

__all__ = ["EVENT_DOMAIN", "MAX_EVENT_BYTES", "open_event", "sign_event"]

EVENT_DOMAIN = b"gatekeeper.event.v1\n"
MAX_EVENT_BYTES = 64 * 1024
MAX_AGE_S = 60.0  # older (or this far in the future): a replay or a broken clock


def _message(subject: str, body: dict[str, Any]) -> bytes:
    return b"%s%s\n%s" % (
        EVENT_DOMAIN,
        subject.encode(),
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
    )


def sign_event(key: SigningKey, subject: str, payload: dict[str, Any]) -> bytes:
    """``payload`` (with node_id and ts set) as signed bytes for ``subject``."""
    body = {**payload, "kid": pid(bytes(key.verify_key))}
    body.pop("sig", None)
    signature = key.sign(_message(subject, body)).signature
    body["sig"] = b64encode(signature)
    return orjson.dumps(body)


def open_event(
    data: bytes, subject: str, registry: NodeKeyRegistry, now: float, max_age_s: float = MAX_AGE_S
) -> dict[str, Any]:
    """The verified payload (without ``sig``); raises ``ControlValueRejected``."""
    if len(data) > MAX_EVENT_BYTES:
        raise ControlValueRejected("oversized", f"{len(data)} bytes")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ControlValueRejected("not_json") from None
    if not isinstance(body, dict):
        raise ControlValueRejected("wrong_shape", "expected a JSON object")
    sig, kid, node, ts = body.pop("sig", None), body.get("kid"), body.get("node_id"), body.get("ts")
    if not isinstance(sig, str) or not isinstance(kid, str):
        raise ControlValueRejected("unsigned", "event carries no signature")
    if not isinstance(node, str) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ControlValueRejected("wrong_shape", "node_id and ts are required")
    owner = registry.owner_of(kid)
    if owner is None:
        raise ControlValueRejected("unknown_node", "signer is not a registered node key")
    if owner[0] != node:
        raise ControlValueRejected("node_mismatch", "signed by another node's key")
    if not registry.is_current(node, kid):
        raise ControlValueRejected("stale_key", "signed by a rotated-out key")
    try:
        owner[1].verify(_message(subject, body), b64decode(sig))
    except (BadSignatureError, MalformedToken, ValueError):
        raise ControlValueRejected("bad_signature") from None
    if abs(now - ts) > max_age_s:
        raise ControlValueRejected("stale", "event too old (a replay?) or from the future")
    return body
