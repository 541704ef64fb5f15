"""What the operator signs into BH_CONFIG, and how a node reads each body (pure).

    key                      body (inside an operator-signed envelope)
    issuers.<kid>            {"pub": "k4.public.…"}           kid must be the pub's k4.pid
    revoked.<key-token>      {"sub", "at", "reason"}          key must be revocation_key(sub)
    routing.matrix           {"models": [...]}
    any of them              {"deleted": true}                a signed tombstone: undo it

A bare KV delete or purge proves nothing and is ignored by every node (see
``gatekeeper.bus.config_watch``); only a signed tombstone removes trust or a
revocation.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from nacl.signing import SigningKey

from gatekeeper.auth.paserk import KeyFormatError, decode_public, pid
from gatekeeper.control.envelope import ControlValueRejected, seal

__all__ = [
    "MATRIX_KEY",
    "TOMBSTONE",
    "is_tombstone",
    "issuer_key",
    "issuer_public",
    "kind_of",
    "revocation_key",
    "revocation_sub",
    "signed_issuer",
    "signed_matrix",
    "signed_revocation",
    "signed_tombstone",
]

MATRIX_KEY = "routing.matrix"
TOMBSTONE = {"deleted": True}
_SAFE = re.compile(r"[A-Za-z0-9_=-]{1,128}")


def kind_of(key: str) -> str | None:
    """Which signed kind a BH_CONFIG key holds (None: not a control value)."""
    if key.startswith("issuers."):
        return "issuer"
    if key.startswith("revoked."):
        return "revocation"
    if key == MATRIX_KEY:
        return "matrix"
    if key.startswith("nodes.") and ".key." in key:
        return "node_key"
    return None


def revocation_key(sub: str) -> str:
    """The KV key for a revoked API key id (hashed when not key-safe)."""
    if _SAFE.fullmatch(sub):
        return f"revoked.{sub}"
    return "revoked.h" + hashlib.blake2b(sub.encode(), digest_size=12).hexdigest()


def issuer_key(public_text: str) -> str:
    return f"issuers.{pid(decode_public(public_text))}"


def is_tombstone(body: Any) -> bool:
    return isinstance(body, dict) and body == TOMBSTONE


def issuer_public(key: str, body: Any) -> bytes:
    """The issuer public key a signed ``issuers.<kid>`` body trusts."""
    pub = body.get("pub") if isinstance(body, dict) else None
    try:
        raw = decode_public(pub) if isinstance(pub, str) else b""
    except KeyFormatError:
        raw = b""
    if not raw:
        raise ControlValueRejected("bad_body", "expected {'pub': 'k4.public.…'}")
    if key != f"issuers.{pid(raw)}":
        raise ControlValueRejected("bad_body", "the key's kid is not the pub's k4.pid")
    return raw


def revocation_sub(key: str, body: Any) -> str:
    """The API key id a signed ``revoked.*`` body revokes."""
    sub = body.get("sub") if isinstance(body, dict) else None
    if not isinstance(sub, str) or not sub:
        raise ControlValueRejected("bad_body", "revocation needs a 'sub'")
    if revocation_key(sub) != key:
        raise ControlValueRejected("bad_body", "the key does not name this sub")
    return sub


def _now(iat: float | None) -> float:
    return time.time() if iat is None else iat


def signed_issuer(operator: SigningKey, public_text: str, iat: float | None = None) -> bytes:
    decode_public(public_text)
    key = issuer_key(public_text)
    return seal(operator, key, {"pub": public_text.strip()}, _now(iat))


def signed_revocation(
    operator: SigningKey, sub: str, reason: str, at: str, iat: float | None = None
) -> bytes:
    body = {"sub": sub, "reason": reason, "at": at}
    return seal(operator, revocation_key(sub), body, _now(iat))


def signed_matrix(operator: SigningKey, models: list[Any], iat: float | None = None) -> bytes:
    return seal(operator, MATRIX_KEY, {"models": models}, _now(iat))


def signed_tombstone(operator: SigningKey, key: str, iat: float | None = None) -> bytes:
    return seal(operator, key, TOMBSTONE, _now(iat))
