"""Step 2 of the pipeline: offline Ed25519 API tokens (PASETO v4.public).

The API key IS a signed token: gateway nodes hold only issuer public keys and verify
with no network call.

* ``paseto``   — v4.public sign / verify, PAE, strict unpadded base64url
* ``paserk``   — ``k4.public`` / ``k4.secret`` text and the ``k4.pid`` key id
* ``claims``   — what a token says (``Claims``), the footer and implicit assertion
* ``verifier`` — ``TokenVerifier``: Authorization header -> ``Claims`` or ``AuthError``
* ``shield``   — per-client-IP limits applied before a token is looked at
* ``keyfiles`` — the issuer's key files and ``mint``
* ``cli``      — ``gatekeeper keys init|mint|inspect``
"""

from __future__ import annotations

from gatekeeper.auth.claims import (
    IMPLICIT_ASSERTION,
    Budget,
    Claims,
    ClaimsError,
    Routing,
    model_allowed,
    parse_claims,
)
from gatekeeper.auth.keyfiles import KeyFileError, init_keys, load_secret_key, mint, parse_ttl
from gatekeeper.auth.paseto import MAX_TOKEN_LEN, TokenError
from gatekeeper.auth.verifier import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_LEEWAY,
    Keyring,
    RevocationList,
    TokenVerifier,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_LEEWAY",
    "IMPLICIT_ASSERTION",
    "MAX_TOKEN_LEN",
    "Budget",
    "Claims",
    "ClaimsError",
    "KeyFileError",
    "Keyring",
    "RevocationList",
    "Routing",
    "TokenError",
    "TokenVerifier",
    "init_keys",
    "load_secret_key",
    "mint",
    "model_allowed",
    "parse_claims",
    "parse_ttl",
]
