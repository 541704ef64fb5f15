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

A token that fails for good (bad signature, invalid or over-long claims, expired)
is remembered too, in a bounded negative cache under the same hash: sending it
again costs the hash and a dict lookup, never a second Ed25519 verify (a revoked
token stays in the positive cache and is refused from there). Failures
that may heal (unknown key, not yet valid, iat ahead of the clock) and the ones
found before any crypto are not cached. ``verifications`` counts signature checks
and ``on_failure(reason)`` hears every refusal (the metric
``gatekeeper_auth_failures_total{reason}``).

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

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_LEEWAY",
    "FAILURE_REASONS",
    "Keyring",
    "RevocationList",
    "TokenVerifier",
]

# Why a token was refused: the ``reason`` label of gatekeeper_auth_failures_total.
FAILURE_REASONS = (
    "missing",
    "malformed",
    "unknown_key",
    "bad_signature",
    "invalid_claims",
    "not_yet_valid",
    "issued_in_future",
    "lifetime_too_long",
    "expired",
    "revoked",
)
_PERMANENT = frozenset({"bad_signature", "invalid_claims", "lifetime_too_long", "expired"})

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


class Refused(AuthError):
    """An ``AuthError`` that knows why (one of ``FAILURE_REASONS``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header value."""
    if authorization is None or not authorization.strip():
        raise Refused(
            "missing", "missing Authorization header: send 'Authorization: Bearer <api key>'"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Refused("missing", "Authorization header is not a Bearer token")
    token = token.strip()
    if not token:
        raise Refused("missing", "empty Bearer token")
    return token


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode("ascii"), digest_size=16).digest()


class TokenVerifier:
    """Turns a bearer token into verified ``Claims`` or raises ``AuthError``.

    ``clock`` returns the current POSIX time in seconds; ``leeway`` seconds of skew
    are tolerated on ``iat``, ``nbf`` and ``exp``; ``cache_size=0`` disables the cache;
    ``max_lifetime`` (seconds) refuses tokens whose ``exp - iat`` is longer.
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
        max_lifetime: float | None = None,
        negative_cache_size: int = DEFAULT_CACHE_SIZE,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.keyring = keyring
        self.revocations = revocations if revocations is not None else RevocationList()
        self._clock = clock
        self._leeway = leeway
        self._cache_size = cache_size
        self._implicit = implicit
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._max_lifetime = max_lifetime
        self._bad: OrderedDict[bytes, Refused] = OrderedDict()
        self._bad_size = negative_cache_size
        self.on_failure = on_failure
        self.verifications = 0  # Ed25519 signature checks done
        keyring.on_remove(self.forget_kid)

    def verify_bearer(self, authorization: str | None) -> Claims:
        """Verify the token in an Authorization header value."""
        try:
            token = bearer_token(authorization)
        except Refused as err:
            self._failed(err.reason)
            raise
        return self.verify_token(token)

    def verify_token(self, token: str) -> Claims:
        """Verify a bare token: signature, key trust, time window and revocation."""
        try:
            return self._verify(token)
        except Refused as err:
            self._failed(err.reason)
            raise

    def knows(self, authorization: str | None) -> bool:
        """Whether this header carries a token already verified (no crypto, no errors)."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        token = authorization[7:].strip()
        return token.isascii() and _digest(token) in self._cache

    def _verify(self, token: str) -> Claims:
        if len(token) > paseto.MAX_TOKEN_LEN:
            raise Refused("malformed", "malformed token: token too long")
        if not token.isascii():
            raise Refused("malformed", "malformed token: token is not ASCII")
        cache_key = _digest(token)
        entry = self._cache.get(cache_key)
        if entry is None:
            known = self._bad.get(cache_key)
            if known is not None:  # known bad: no second signature check
                raise Refused(known.reason, known.message)
            try:
                entry = self._verify_uncached(token)
                self._check_expiry(entry)
            except Refused as err:
                if err.reason in _PERMANENT:
                    self._remember_bad(cache_key, err)
                raise
            self._remember(cache_key, entry)  # a revoked token too: refused from the cache
            self._check_revoked(entry)
        else:
            self._check_live(entry)
            self._cache.move_to_end(cache_key)
        return entry.claims

    def _failed(self, reason: str) -> None:
        if self.on_failure is not None:
            self.on_failure(reason)

    def _remember_bad(self, cache_key: bytes, err: Refused) -> None:
        if self._bad_size <= 0:
            return
        self._bad[cache_key] = err
        if len(self._bad) > self._bad_size:
            self._bad.popitem(last=False)

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
            raise Refused("malformed", f"malformed token: {exc}") from None
        public_key = self.keyring.get(kid)
        if public_key is None:
            raise Refused("unknown_key", "token signed by an unknown or retired key")
        self.verifications += 1
        try:
            verified = paseto.verify(token, public_key, self._implicit)
        except paseto.BadSignature:
            raise Refused("bad_signature", "bad token signature") from None
        except paseto.TokenError as exc:
            raise Refused("bad_signature", f"malformed token: {exc}") from None
        try:
            claims = parse_claims(verified.payload)
        except ClaimsError as exc:
            raise Refused("invalid_claims", f"invalid token claims: {exc}") from None
        self._check_window(claims)
        return _Entry(claims=claims, kid=kid, exp=claims.exp.timestamp())

    def _check_window(self, claims: Claims) -> None:
        now, iat = self._clock(), claims.iat.timestamp()
        if now + self._leeway < claims.nbf.timestamp():
            raise Refused("not_yet_valid", "token not yet valid")
        if now + self._leeway < iat:
            raise Refused("issued_in_future", "token issued in the future (iat)")
        lifetime = claims.exp.timestamp() - iat
        if self._max_lifetime is not None and lifetime > self._max_lifetime:
            raise Refused(
                "lifetime_too_long",
                f"token lifetime (exp - iat) is over this gateway's maximum of "
                f"{self._max_lifetime / 86_400:g} days (auth.max_token_lifetime)",
            )

    def _check_live(self, entry: _Entry) -> None:
        self._check_expiry(entry)
        self._check_revoked(entry)

    def _check_expiry(self, entry: _Entry) -> None:
        if self._clock() - self._leeway >= entry.exp:
            raise Refused("expired", "token expired")

    def _check_revoked(self, entry: _Entry) -> None:
        if entry.claims.sub in self.revocations:
            raise Refused("revoked", "token revoked")

    def _remember(self, cache_key: bytes, entry: _Entry) -> None:
        if self._cache_size <= 0:
            return
        self._cache[cache_key] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
