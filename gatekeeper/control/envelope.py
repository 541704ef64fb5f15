"""Signed control values: the bytes a BH_CONFIG entry holds when it must prove its writer.

A value is one JSON object::

    {"v": 1, "key": "<KV key or subject>", "iat": <unix float>, "body": <any JSON>,
     "kid": "<k4.pid of the signer's public key>", "sig": "<base64url Ed25519 signature>"}

The signature covers ``b"gatekeeper.control.v1\\n"`` followed by
``orjson.dumps({"v", "key", "iat", "body", "kid"}, option=orjson.OPT_SORT_KEYS)``.
``key`` binds the value to the entry it was written for, so a signed value copied
under another key is refused. Opening checks size, JSON, shape, key, signer and
signature, in that order, and fails closed with a short ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode

__all__ = [
    "DOMAIN",
    "MAX_VALUE_BYTES",
    "ControlValueRejected",
    "Envelope",
    "open_envelope",
    "seal",
    "signed_message",
]

DOMAIN = b"gatekeeper.control.v1\n"
MAX_VALUE_BYTES = 64 * 1024
_FIELDS = frozenset({"v", "key", "iat", "body", "kid", "sig"})


class ControlValueRejected(Exception):
    """A control value that is not accepted; ``reason`` is short and never echoes it.

    Reasons: ``oversized``, ``not_json``, ``wrong_shape``, ``key_mismatch``,
    ``unknown_kid``, ``bad_signature``, and those of the callers (``registry``,
    config watch) such as ``bad_body`` or ``stale``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened, verified control value."""

    key: str
    iat: float
    body: Any
    kid: str


def signed_message(key: str, iat: float, body: Any, kid: str) -> bytes:
    """The exact bytes the signature covers."""
    head = {"v": 1, "key": key, "iat": iat, "body": body, "kid": kid}
    return DOMAIN + orjson.dumps(head, option=orjson.OPT_SORT_KEYS)


def seal(signing_key: SigningKey, key: str, body: Any, iat: float) -> bytes:
    """The value to store under ``key``: ``body`` signed by ``signing_key`` at ``iat``."""
    if not math.isfinite(iat):
        raise ValueError("iat must be a finite unix time")
    iat = float(iat)
    kid = pid(bytes(signing_key.verify_key))
    signature = signing_key.sign(signed_message(key, iat, body, kid)).signature
    value = {"v": 1, "key": key, "iat": iat, "body": body, "kid": kid, "sig": b64encode(signature)}
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"a control value is at most {MAX_VALUE_BYTES} bytes")
    return data


def _parse(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_VALUE_BYTES:
        raise ControlValueRejected("oversized", f"{len(data)} bytes")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ControlValueRejected("not_json") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise ControlValueRejected("wrong_shape", "expected v, key, iat, body, kid, sig")
    iat = doc["iat"]
    if (
        doc["v"] != 1
        or type(doc["v"]) is not int
        or not isinstance(doc["key"], str)
        or not isinstance(doc["kid"], str)
        or not isinstance(doc["sig"], str)
        or type(iat) not in (int, float)
        or not math.isfinite(iat)
    ):
        raise ControlValueRejected("wrong_shape", "bad field type or version")
    return doc


def open_envelope(data: bytes, expected_key: str, trusted: Mapping[str, VerifyKey]) -> Envelope:
    """Verify ``data`` as the value of ``expected_key`` signed by one of ``trusted``.

    ``trusted`` maps ``k4.pid`` key ids to their public keys. Raises
    ``ControlValueRejected`` with the first reason that applies.
    """
    doc = _parse(data)
    if doc["key"] != expected_key:
        raise ControlValueRejected("key_mismatch", "value was signed for another key")
    verify_key = trusted.get(doc["kid"])
    if verify_key is None:
        raise ControlValueRejected("unknown_kid", "signer is not trusted")
    try:
        signature = b64decode(doc["sig"])
    except MalformedToken:
        raise ControlValueRejected("bad_signature", "signature is not base64url") from None
    if len(signature) != 64:
        raise ControlValueRejected("bad_signature", "signature must be 64 bytes")
    message = signed_message(doc["key"], doc["iat"], doc["body"], doc["kid"])
    try:
        verify_key.verify(message, signature)
    except BadSignatureError:
        raise ControlValueRejected("bad_signature") from None
    return Envelope(key=doc["key"], iat=float(doc["iat"]), body=doc["body"], kid=doc["kid"])
