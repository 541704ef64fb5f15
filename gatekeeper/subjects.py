"""Values made safe as NATS subject tokens (pure): a tenant, a node, a key id."""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = ["subject_token", "tenant_token"]

_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]")
_PLAIN_TENANT_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_MAX_TOKEN = 128


def subject_token(value: str) -> str:
    """A value made safe for one NATS subject token (tenant, node, key id)."""
    return _TOKEN_RE.sub("_", value)[:128] or "_"


def tenant_token(tenant: str) -> str:
    """The subject token of a tenant: injective, so no two tenants share a subject.

    ``[A-Za-z0-9-]{1,64}`` stays as it is (no ``_``); anything else is ``_`` plus the
    base64url of its UTF-8 (which never starts with ``_`` or ``-``: those would be
    bytes 0xF8–0xFF, never in UTF-8), or, when that is longer than 128 characters,
    ``__`` plus the first 32 hex digits of its SHA-256.
    """
    if _PLAIN_TENANT_RE.fullmatch(tenant):
        return tenant
    raw = tenant.encode("utf-8", "surrogatepass")
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(encoded) < _MAX_TOKEN:
        return "_" + encoded
    return "__" + hashlib.sha256(raw).hexdigest()[:32]
