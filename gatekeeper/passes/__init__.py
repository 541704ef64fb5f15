"""Privacy Pass (RFC 9576–9578), token type 0x0001 VOPRF(P-384, SHA-384).

Server side: ``keys`` (per-tenant, per-epoch issuer keys), ``issuer`` (issuance within a
key's allowance), ``redeem`` (``Authorization: PrivateToken`` → tenant-level claims),
``spent`` (cluster-wide double-spend refusal on NATS KV), ``service`` (wiring, endpoints).
Client side: ``wallet`` (fetch passes with an API key; spend them as ``httpx.Auth``).
Formats: ``wire``. What it proves and what it does not: docs/privacy.md.
"""

from gatekeeper.passes.wallet import NoPassesLeft, Wallet, fetch_passes

__all__ = ["NoPassesLeft", "Wallet", "fetch_passes"]
