"""Offline API-token verification: trusted keys in, ``Claims`` or ``AuthError`` out.

A gateway node holds only issuer *public* keys (the ``Keyring``) and a set of revoked
key ids (the ``RevocationList``); verifying a token needs no network call. The order
of checks on a token the node has not seen before::

    Authorization header  ->  size / ASCII / header / base64   (no crypto yet)
    footer kid            ->  trusted key from the Keyring     (kid only *selects*)
    Ed25519 signature     ->  over PAE(header, payload, footer, IMPLICIT_ASSERTION)
    claims                ->  typed Claims, nbf / exp with leeway, revocation

A token that passes is remembered in a bounded LRU keyed by BLAKE2b(token), so the
next request with it costs a dict lookup plus the two checks that can change over
time: expiry and revocation. Removing a key from the keyring drops every cached
token it vouched for. Errors never echo the token or any key material.

Not thread-safe: one verifier per event loop, as the gateway runs it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from gatekeeper.auth import paseto
from gatekeeper.auth.claims import (
    IMPLICIT_ASSERTION,
    Claims,
    ClaimsError,
    footer_kid,
    parse_claims,
)
from gatekeeper.auth.paserk import pid
from gatekeeper.errors import AuthError

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_LEEWAY", "Keyring", "RevocationList", "TokenVerifier"]

DEFAULT_LEEWAY = 30.0  # seconds of clock skew tolerated on nbf and exp
DEFAULT_CACHE_SIZE = 10_000


class Keyring(Mapping[str, bytes]):
    """Trusted issuer public keys by ``k4.pid`` id; change it at run time to rotate.

    The kid of a key is always computed from the key, never taken on trust.
    """

    def __init__(self, public_keys: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, bytes] = {}
        self._on_remove: list[Callable[[str], None]] = []
        for key in public_keys:
            self.add(key)

    def __getitem__(self, kid: str) -> bytes:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, public_key: bytes) -> str:
        """Trust ``public_key`` (32 bytes); returns its kid."""
        kid = pid(bytes(public_key))
        self._keys[kid] = bytes(public_key)
        return kid

    def remove(self, kid: str) -> bool:
        """Stop trusting ``kid``; tokens it signed fail from now on, cached or not."""
        if self._keys.pop(kid, None) is None:
            return False
        for callback in self._on_remove:
            callback(kid)
        return True

    def on_remove(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(kid)`` whenever a key is removed."""
        self._on_remove.append(callback)


class RevocationList:
    """The ``sub`` key ids whose tokens are refused, however valid otherwise."""

    def __init__(self, subs: Iterable[str] = ()) -> None:
        self._subs: set[str] = set(subs)

    def __contains__(self, sub: object) -> bool:
        return sub in self._subs

    def __len__(self) -> int:
        return len(self._subs)

    def revoke(self, sub: str) -> None:
        self._subs.add(sub)

    def unrevoke(self, sub: str) -> None:
        self._subs.discard(sub)

    def replace_all(self, subs: Iterable[str]) -> None:
        """Swap in a complete new list (e.g. a snapshot from the control plane)."""
        self._subs = set(subs)


@dataclass(frozen=True, slots=True)
class _Entry:
    claims: Claims
    kid: str
    exp: float  # claims.exp as a POSIX timestamp, for a cheap comparison


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header value."""
    if authorization is None or not authorization.strip():
        raise AuthError("missing Authorization header: send 'Authorization: Bearer <api key>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("Authorization header is not a Bearer token")
    token = token.strip()
    if not token:
        raise AuthError("empty Bearer token")
    return token


class TokenVerifier:
    """Turns a bearer token into verified ``Claims`` or raises ``AuthError``.

    ``clock`` returns the current POSIX time in seconds; ``leeway`` seconds of skew
    are tolerated on ``nbf`` and ``exp``; ``cache_size=0`` disables the cache.
    """

    def __init__(
        self,
        keyring: Keyring,
        revocations: RevocationList | None = None,
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = DEFAULT_LEEWAY,
        cache_size: int = DEFAULT_CACHE_SIZE,
        implicit: bytes = IMPLICIT_ASSERTION,
    ) -> None:
        self.keyring = keyring
        self.revocations = revocations if revocations is not None else RevocationList()
        self._clock = clock
        self._leeway = leeway
        self._cache_size = cache_size
        self._implicit = implicit
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        keyring.on_remove(self.forget_kid)

    def verify_bearer(self, authorization: str | None) -> Claims:
        """Verify the token in an Authorization header value."""
        return self.verify_token(bearer_token(authorization))

    def verify_token(self, token: str) -> Claims:
        """Verify a bare token: signature, key trust, time window and revocation."""
        if len(token) > paseto.MAX_TOKEN_LEN:
            raise AuthError("malformed token: token too long")
        if not token.isascii():
            raise AuthError("malformed token: token is not ASCII")
        cache_key = hashlib.blake2b(token.encode("ascii"), digest_size=16).digest()
        entry = self._cache.get(cache_key)
        if entry is None:
            entry = self._verify_uncached(token)
            self._check_live(entry)
            self._remember(cache_key, entry)
        else:
            self._check_live(entry)
            self._cache.move_to_end(cache_key)
        return entry.claims

    def forget_kid(self, kid: str) -> None:
        """Drop every cached token signed by ``kid`` (called when the key is removed)."""
        for key in [k for k, e in self._cache.items() if e.kid == kid]:
            del self._cache[key]

    @property
    def cached(self) -> int:
        """How many verified tokens the cache holds."""
        return len(self._cache)

    def _verify_uncached(self, token: str) -> _Entry:
        try:
            kid = footer_kid(paseto.peek_footer(token))
        except (paseto.TokenError, ClaimsError) as exc:
            raise AuthError(f"malformed token: {exc}") from None
        public_key = self.keyring.get(kid)
        if public_key is None:
            raise AuthError("token signed by an unknown or retired key")
        try:
            verified = paseto.verify(token, public_key, self._implicit)
        except paseto.BadSignature:
            raise AuthError("bad token signature") from None
        except paseto.TokenError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        try:
            claims = parse_claims(verified.payload)
        except ClaimsError as exc:
            raise AuthError(f"invalid token claims: {exc}") from None
        if self._clock() + self._leeway < claims.nbf.timestamp():
            raise AuthError("token not yet valid")
        return _Entry(claims=claims, kid=kid, exp=claims.exp.timestamp())

    def _check_live(self, entry: _Entry) -> None:
        if self._clock() - self._leeway >= entry.exp:
            raise AuthError("token expired")
        if entry.claims.sub in self.revocations:
            raise AuthError("token revoked")

    def _remember(self, cache_key: bytes, entry: _Entry) -> None:
        if self._cache_size <= 0:
            return
        self._cache[cache_key] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
