"""PASETO v4.public: Ed25519 signed tokens, and nothing else.

Token layout (https://github.com/paseto-standard/paseto-spec, v4 "Sign"/"Verify")::

    v4.public.<base64url(message || signature)>[.<base64url(footer)>]

The signature covers ``PAE("v4.public.", message, footer, implicit)``. The implicit
assertion is never sent; signer and verifier must agree on it out of band.

Everything here is strict and fails closed, before any crypto runs:

* tokens longer than ``MAX_TOKEN_LEN`` characters or containing non-ASCII are refused;
* only the exact header ``v4.public.`` is accepted (``v4.local``, ``v3.*``, ... are not);
* base64url must be unpadded and canonical (no ``=``, no stray characters, no
  non-zero trailing bits), so one token has exactly one spelling;
* an empty footer is written as no footer at all, never as a trailing ``.``.

Errors form a tiny tree, each with a short ``reason`` that never echoes the token::

    TokenError(ValueError)
    ├── MalformedToken     "token too long", "token is not ASCII", "wrong header",
    │                      "bad base64", "truncated token", "empty footer segment"
    └── BadSignature       "bad signature"
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "HEADER",
    "MAX_TOKEN_LEN",
    "BadSignature",
    "MalformedToken",
    "TokenError",
    "Verified",
    "b64decode",
    "b64encode",
    "pae",
    "peek_footer",
    "sign",
    "verify",
]

HEADER = "v4.public."
MAX_TOKEN_LEN = 8192
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32
SEED_LEN = 32
SECRET_KEY_LEN = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEADER_BYTES = HEADER.encode("ascii")


class TokenError(ValueError):
    """A token could not be read or verified. ``reason`` is short and names no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedToken(TokenError):
    """The token is not a well-formed v4.public token."""


class BadSignature(TokenError):
    """The token is well-formed but its signature does not verify under the given key."""

    def __init__(self, reason: str = "bad signature") -> None:
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Verified:
    """The authenticated parts of a verified token."""

    payload: bytes
    footer: bytes


def b64encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict base64url without padding: one canonical spelling per byte string."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise MalformedToken("bad base64")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("bad base64") from None
    if b64encode(data) != text:  # non-zero trailing bits: a second spelling
        raise MalformedToken("bad base64")
    return data


def _le64(n: int) -> bytes:
    return (n & 0x7FFF_FFFF_FFFF_FFFF).to_bytes(8, "little")


def pae(*pieces: bytes) -> bytes:
    """Pre-Authentication Encoding: the length-prefixed concatenation PASETO signs."""
    out = bytearray(_le64(len(pieces)))
    for piece in pieces:
        out += _le64(len(piece))
        out += piece
    return bytes(out)


def signing_key(secret_key: bytes) -> SigningKey:
    """An Ed25519 key from a 32-byte seed or a 64-byte ``seed || public`` secret key."""
    if len(secret_key) == SEED_LEN:
        return SigningKey(secret_key)
    if len(secret_key) == SECRET_KEY_LEN:
        key = SigningKey(secret_key[:SEED_LEN])
        if key.verify_key.encode() != secret_key[SEED_LEN:]:
            raise ValueError("secret key's public half does not match its seed")
        return key
    raise ValueError("Ed25519 secret key must be 32 or 64 bytes")


def sign(secret_key: bytes, message: bytes, footer: bytes = b"", implicit: bytes = b"") -> str:
    """Sign ``message`` as a v4.public token (deterministic: Ed25519 needs no nonce)."""
    signature = signing_key(secret_key).sign(pae(_HEADER_BYTES, message, footer, implicit))
    token = HEADER + b64encode(message + signature.signature)
    if footer:
        token += "." + b64encode(footer)
    return token


def _split(token: str) -> tuple[str, str | None]:
    """Size, charset and header checks; returns the body and footer segments."""
    if len(token) > MAX_TOKEN_LEN:
        raise MalformedToken("token too long")
    if not token.isascii():
        raise MalformedToken("token is not ASCII")
    if not token.startswith(HEADER):
        raise MalformedToken("wrong header")
    parts = token[len(HEADER) :].split(".")
    if _B64URL.fullmatch(parts[0]) is None:
        raise MalformedToken("bad base64")
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2:
        if not parts[1]:
            raise MalformedToken("empty footer segment")
        return parts[0], parts[1]
    raise MalformedToken("too many segments")


def peek_footer(token: str) -> bytes:
    """The footer, UNVERIFIED: only for choosing which trusted key to verify with."""
    _, footer = _split(token)
    return b"" if footer is None else b64decode(footer)


def verify(token: str, public_key: bytes, implicit: bytes = b"") -> Verified:
    """Verify a v4.public token under ``public_key`` and the agreed implicit assertion."""
    body_text, footer_text = _split(token)
    body = b64decode(body_text)
    footer = b"" if footer_text is None else b64decode(footer_text)
    if len(body) < SIGNATURE_LEN:
        raise MalformedToken("truncated token")
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError("Ed25519 public key must be 32 bytes")
    message, signature = body[:-SIGNATURE_LEN], body[-SIGNATURE_LEN:]
    try:
        VerifyKey(public_key).verify(pae(_HEADER_BYTES, message, footer, implicit), signature)
    except BadSignatureError:
        raise BadSignature() from None
    return Verified(payload=message, footer=footer)
