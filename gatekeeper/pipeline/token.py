"""Step 2, the token: a Bearer API key's claims (Ed25519 PASETO, verified offline and
cached: ``auth.TokenVerifier``) or a Privacy Pass's tenant-level claims (``passes``), or
for a batch line the claims its creator was verified with; then whether the key may use
the model it asked for."""

from __future__ import annotations

from gatekeeper.auth.claims import Claims, model_allowed
from gatekeeper.auth.verifier import TokenVerifier
from gatekeeper.errors import AuthError, PermissionDenied
from gatekeeper.http.inbound import Readable
from gatekeeper.passes.redeem import Redeemer, is_private_token, refuse_second_authorization

__all__ = ["GRANTED_CLAIMS", "authenticate", "check_model_allowed"]

# A scope key only code can set (never a client): claims verified before, for a batch
# line run as its creator (gatekeeper.batches.execute).
GRANTED_CLAIMS = "gatekeeper.granted_claims"


async def authenticate(
    request: Readable, verifier: TokenVerifier, passes: Redeemer | None
) -> Claims:
    """A Bearer API key's claims, or a Privacy Pass's tenant-level claims."""
    granted: Claims | None = request.scope.get(GRANTED_CLAIMS)
    if granted is not None:  # a batch line: its creator's claims (gatekeeper.batches)
        if granted.sub in verifier.revocations:
            raise AuthError("The API key that created this batch is revoked")
        return granted
    authorization = request.headers.get("authorization")
    if passes is not None and is_private_token(authorization):
        assert authorization is not None
        refuse_second_authorization(request.scope["headers"])
        return await passes.redeem(authorization)
    return verifier.verify_bearer(authorization)


def check_model_allowed(claims: Claims, model: str) -> None:
    if not model_allowed(claims, model):
        raise PermissionDenied(
            f"This API key may not use the model '{model}'",
            param="model",
            code="model_not_allowed",
        )
