"""PASERK for v4 keys: ``k4.public``, ``k4.secret`` and the ``k4.pid`` key id.

Specification: https://github.com/paseto-standard/paserk (``types/public.md``,
``types/secret.md``, ``operations/ID.md``).

* ``k4.public.`` + base64url(32-byte Ed25519 public key)
* ``k4.secret.`` + base64url(64-byte Ed25519 secret key, i.e. ``seed || public``)
* ``k4.pid.`` + base64url(BLAKE2b-264(``"k4.pid."`` || the whole ``k4.public`` PASERK))

The pid is what a token's footer carries as ``kid``: it names a public key without
revealing anything a verifier does not already hold, and it cannot be mistaken for
an id of another version or key type because the prefix is hashed in.
"""

from __future__ import annotations

import hashlib

from nacl.signing import SigningKey

from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode, signing_key

__all__ = [
    "PID_PREFIX",
    "PUBLIC_PREFIX",
    "SECRET_PREFIX",
    "KeyFormatError",
    "decode_public",
    "decode_secret",
    "encode_public",
    "encode_secret",
    "generate_secret_key",
    "pid",
    "public_key_of",
]

PUBLIC_PREFIX = "k4.public."
SECRET_PREFIX = "k4.secret."
PID_PREFIX = "k4.pid."
_PID_LEN = 33  # BLAKE2b-264


class KeyFormatError(ValueError):
    """A PASERK string or raw key has the wrong prefix, encoding or length."""


def _decode(text: str, prefix: str, length: int) -> bytes:
    text = text.strip()
    if not text.startswith(prefix):
        raise KeyFormatError(f"expected a {prefix.rstrip('.')} key")
    try:
        raw = b64decode(text[len(prefix) :])
    except MalformedToken:
        raise KeyFormatError(f"{prefix.rstrip('.')} key is not strict base64url") from None
    if len(raw) != length:
        raise KeyFormatError(f"{prefix.rstrip('.')} key must be {length} bytes")
    return raw


def encode_public(public_key: bytes) -> str:
    """``k4.public.…`` for a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise KeyFormatError("k4.public key must be 32 bytes")
    return PUBLIC_PREFIX + b64encode(public_key)


def decode_public(text: str) -> bytes:
    """The 32-byte public key in a ``k4.public`` PASERK."""
    return _decode(text, PUBLIC_PREFIX, 32)


def encode_secret(secret_key: bytes) -> str:
    """``k4.secret.…`` for an Ed25519 secret key (a 32-byte seed is expanded to 64 bytes)."""
    try:
        key = signing_key(secret_key)
    except ValueError as exc:
        raise KeyFormatError(str(exc)) from None
    return SECRET_PREFIX + b64encode(bytes(key) + key.verify_key.encode())


def decode_secret(text: str) -> bytes:
    """The 64-byte secret key in a ``k4.secret`` PASERK; its public half must match."""
    raw = _decode(text, SECRET_PREFIX, 64)
    try:
        signing_key(raw)
    except ValueError as exc:
        raise KeyFormatError(str(exc)) from None
    return raw


def public_key_of(secret_key: bytes) -> bytes:
    """The 32-byte public key belonging to a secret key (seed or 64-byte form)."""
    try:
        return bytes(signing_key(secret_key).verify_key.encode())
    except ValueError as exc:
        raise KeyFormatError(str(exc)) from None


def pid(public_key: bytes) -> str:
    """The ``k4.pid`` key id of a 32-byte public key."""
    header = PID_PREFIX.encode("ascii")
    paserk = encode_public(public_key).encode("ascii")
    digest = hashlib.blake2b(header + paserk, digest_size=_PID_LEN).digest()
    return PID_PREFIX + b64encode(digest)


def generate_secret_key() -> bytes:
    """A fresh random 64-byte Ed25519 secret key (``seed || public``)."""
    key = SigningKey.generate()
    return bytes(key) + bytes(key.verify_key.encode())
