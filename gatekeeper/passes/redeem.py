"""Redemption: ``Authorization: PrivateToken token="…"`` in, tenant-level ``Claims`` out.

The order of checks, cheapest first, so that nothing unauthenticated reaches the bus::

    header / base64 / length / type      -> 401 private_token_malformed
    challenge digest                     -> 401 private_token_wrong_challenge
    token key id -> accepted epoch key   -> 401 private_token_unknown_key (old or foreign)
    authenticator == VOPRF(sk, input)    -> 401 private_token_invalid  (constant-time)
    KV create on the nonce               -> 401 private_token_spent
    a second Authorization header        -> 400 ambiguous_authorization

Every refusal carries ``WWW-Authenticate: PrivateToken challenge=…`` with the
``token-key`` of the tenant when the token named one this node knows (RFC 9577 §2.1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from gatekeeper.auth.claims import Claims
from gatekeeper.errors import AuthError, InvalidRequest
from gatekeeper.passes.keys import KeyStore
from gatekeeper.passes.spent import SpentStore
from gatekeeper.passes.wire import (
    WireError,
    challenge_header,
    parse_private_token,
)

__all__ = ["Redeemer", "is_private_token", "refuse_second_authorization"]


def is_private_token(authorization: str | None) -> bool:
    """Whether an Authorization value uses the PrivateToken scheme (cheap)."""
    return authorization is not None and authorization[:13].lower().startswith("privatetoken")


def refuse_second_authorization(raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """400 when a pass comes with another Authorization header (e.g. a Bearer key)."""
    if sum(1 for name, _ in raw_headers if name.lower() == b"authorization") > 1:
        raise InvalidRequest(
            "Send either a Privacy Pass or a Bearer API key, not both",
            code="ambiguous_authorization",
        )


class Redeemer:
    """Turns a PrivateToken authorization into the claims its tenant is charged under."""

    def __init__(self, keys: KeyStore, spent: SpentStore, challenge: bytes) -> None:
        self.keys = keys
        self.spent = spent
        self.challenge = challenge
        self.digest = hashlib.sha256(challenge).digest()

    def refusal(self, message: str, code: str, tenant: str | None = None) -> AuthError:
        key = self.keys.current(tenant) if tenant is not None else None
        header = challenge_header(self.challenge, key.public_key if key else None)
        return AuthError(message, code=code, headers={"www-authenticate": header})

    async def redeem(self, authorization: str) -> Claims:
        try:
            token = parse_private_token(authorization)
        except WireError as exc:
            raise self.refusal(
                f"malformed Privacy Pass: {exc}", "private_token_malformed"
            ) from None
        if not hmac.compare_digest(token.challenge_digest, self.digest):
            raise self.refusal(
                "This Privacy Pass answers another challenge", "private_token_wrong_challenge"
            )
        key = self.keys.lookup(token.key_id)
        if key is None:
            raise self.refusal(
                "This Privacy Pass is from an expired or unknown issuer key; fetch new passes",
                "private_token_unknown_key",
                self.keys.tenant_of_retired(token.key_id),
            )
        expected = key.evaluator.evaluate_known_input(token.token_input)
        if not hmac.compare_digest(expected, token.authenticator):
            raise self.refusal("Invalid Privacy Pass", "private_token_invalid", key.tenant)
        if not await self.spent.spend(key.epoch, key.key_id, token.nonce):
            raise self.refusal(
                "This Privacy Pass was already spent", "private_token_spent", key.tenant
            )
        return key.claims

    async def housekeeping(self) -> None:
        """Open the accepted epochs' spent buckets; delete those of epochs no longer accepted."""
        dropped, self.keys.dropped = self.keys.dropped, []
        for epoch in dropped:
            await self.spent.forget(epoch)
        for epoch in sorted({k.epoch for k in self.keys.accepted_all()}):
            await self.spent.open(epoch)
