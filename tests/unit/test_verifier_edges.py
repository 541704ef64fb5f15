"""The verifier's defences: negative cache, failure reasons, lifetime and iat checks."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.errors import AuthError
from tests.unit.test_token_verifier import PUBLIC, ROGUE_SECRET, FakeClock, payload, token_for


def verifier(clock: FakeClock | None = None, **kw: Any) -> tuple[TokenVerifier, list[str]]:
    reasons: list[str] = []
    v = TokenVerifier(
        Keyring([PUBLIC]), clock=clock or FakeClock(), on_failure=reasons.append, **kw
    )
    return v, reasons


def refused(v: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as err:
        v.verify_token(token)
    return err.value.message


class TestNegativeCache:
    def test_a_bad_signature_is_checked_once(self) -> None:
        """The same forged token (trusted kid, wrong signer) costs one Ed25519 verify,
        however often it is sent; every refusal is still reported."""
        v, reasons = verifier()
        forged = token_for(payload(), secret=ROGUE_SECRET)
        messages = {refused(v, forged) for _ in range(50)}
        assert messages == {"bad token signature"}
        assert v.verifications == 1
        assert reasons == ["bad_signature"] * 50

    def test_an_expired_token_is_checked_once(self) -> None:
        clock = FakeClock()
        v, reasons = verifier(clock)
        token = token_for(payload())
        clock.now += 2 * 3600
        for _ in range(3):
            assert refused(v, token) == "token expired"
        assert v.verifications == 1 and reasons == ["expired"] * 3

    def test_a_revoked_token_is_checked_once(self) -> None:
        """Revocation is looked up on every request, but the signature only once."""
        v, reasons = verifier()
        v.revocations.revoke("key_0123456789abcdef")
        token = token_for(payload())
        for _ in range(3):
            assert refused(v, token) == "token revoked"
        assert v.verifications == 1 and reasons == ["revoked"] * 3
        v.revocations.unrevoke("key_0123456789abcdef")
        assert v.verify_token(token).sub == "key_0123456789abcdef"

    def test_failures_that_may_heal_are_not_cached(self) -> None:
        """A token not yet valid becomes valid: it is verified again later."""
        clock = FakeClock()
        v, _ = verifier(clock)
        token = token_for(payload(nbf="2025-06-01T12:10:00Z"))
        assert refused(v, token) == "token not yet valid"
        clock.now += 600
        assert v.verify_token(token).tenant == "acme"
        assert v.verifications == 2

    def test_the_negative_cache_is_bounded(self) -> None:
        v, _ = verifier(negative_cache_size=2)
        forged = [token_for(payload(jti=f"j{i}"), secret=ROGUE_SECRET) for i in range(3)]
        for t in forged:
            refused(v, t)
        refused(v, forged[0])  # pushed out by the third: checked again
        assert v.verifications == 4

    def test_knows_only_tokens_already_accepted(self) -> None:
        v, _ = verifier()
        good = token_for(payload())
        assert not v.knows(f"Bearer {good}")
        v.verify_token(good)
        assert v.knows(f"Bearer {good}") and v.knows(f"bearer {good}")
        assert not v.knows(None) and not v.knows("Basic x") and not v.knows("Bearer é")


class TestReasons:
    @pytest.mark.parametrize(
        ("header", "reason"),
        [(None, "missing"), ("Basic abc", "missing"), ("Bearer v4.public.x", "malformed")],
    )
    def test_each_refusal_names_its_reason(self, header: str | None, reason: str) -> None:
        v, reasons = verifier()
        with pytest.raises(AuthError):
            v.verify_bearer(header)
        assert reasons == [reason]


class TestLifetimeAndIat:
    def test_a_token_living_longer_than_the_maximum_is_refused(self) -> None:
        """exp - iat over max_lifetime is refused, even while inside its window."""
        v, reasons = verifier(max_lifetime=1800)
        message = refused(v, token_for(payload()))  # lives one hour
        assert "lifetime" in message and reasons == ["lifetime_too_long"]
        ok, _ = verifier(max_lifetime=3600)
        assert ok.verify_token(token_for(payload())).sub

    def test_an_iat_ahead_of_the_clock_beyond_leeway_is_refused(self) -> None:
        v, reasons = verifier(leeway=30)
        future = payload(iat="2025-06-01T12:01:00Z", nbf="2025-06-01T12:00:00Z")
        assert "issued in the future" in refused(v, token_for(future))
        assert reasons == ["issued_in_future"]

    def test_an_iat_within_leeway_is_accepted(self) -> None:
        v, _ = verifier(leeway=30)
        near = payload(iat="2025-06-01T12:00:20Z", nbf="2025-06-01T12:00:00Z")
        assert v.verify_token(token_for(near)).sub
