"""TokenVerifier, Keyring, RevocationList and the claims a token carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from gatekeeper.auth import paserk, paseto
from gatekeeper.auth.claims import (
    IMPLICIT_ASSERTION,
    Budget,
    Claims,
    ClaimsError,
    Routing,
    encode_footer,
    model_allowed,
    parse_claims,
)
from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.verifier import DEFAULT_LEEWAY, Keyring, RevocationList, TokenVerifier
from gatekeeper.errors import AuthError

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
SECRET = paserk.generate_secret_key()
PUBLIC = paserk.public_key_of(SECRET)
KID = paserk.pid(PUBLIC)
ROGUE_SECRET = paserk.generate_secret_key()


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "gatekeeper",
        "sub": "key_0123456789abcdef",
        "jti": "j1",
        "iat": "2025-06-01T12:00:00Z",
        "nbf": "2025-06-01T12:00:00Z",
        "exp": "2025-06-01T13:00:00Z",
        "tenant": "acme",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token_for(
    body: dict[str, Any],
    *,
    secret: bytes = SECRET,
    kid: str = KID,
    implicit: bytes = IMPLICIT_ASSERTION,
) -> str:
    return paseto.sign(secret, orjson.dumps(body), encode_footer(kid), implicit)


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(Keyring([PUBLIC]), RevocationList(), clock=clock)


class TestBearerHeader:
    @pytest.mark.parametrize("header", [None, "", "   "])
    def test_missing_header(self, verifier: TokenVerifier, header: str | None) -> None:
        """No Authorization header is reported as missing."""
        with pytest.raises(AuthError, match="missing Authorization header"):
            verifier.verify_bearer(header)

    def test_not_bearer(self, verifier: TokenVerifier) -> None:
        """A Basic (or any non-Bearer) scheme is refused."""
        with pytest.raises(AuthError, match="not a Bearer token"):
            verifier.verify_bearer("Basic dXNlcjpwYXNz")

    def test_empty_bearer(self, verifier: TokenVerifier) -> None:
        """'Bearer' with nothing after it is refused."""
        with pytest.raises(AuthError, match="empty Bearer token"):
            verifier.verify_bearer("Bearer   ")

    def test_scheme_is_case_insensitive(self, verifier: TokenVerifier) -> None:
        """'bearer' works like 'Bearer' (RFC 7235 schemes are case-insensitive)."""
        assert verifier.verify_bearer("bearer " + token_for(payload())).tenant == "acme"


class TestVerify:
    def test_valid_token_gives_claims(self, verifier: TokenVerifier) -> None:
        """A good token yields its typed claims."""
        claims = verifier.verify_bearer(bearer(token_for(payload(rpm=60))))
        assert claims.sub == "key_0123456789abcdef"
        assert claims.exp == NOW + timedelta(hours=1)
        assert claims.rpm == 60

    def test_garbled(self, verifier: TokenVerifier) -> None:
        """Something that is not a token is reported as malformed."""
        with pytest.raises(AuthError, match="malformed token: wrong header"):
            verifier.verify_bearer("Bearer sk-not-a-paseto")
        with pytest.raises(AuthError, match="malformed token: bad base64"):
            verifier.verify_bearer("Bearer v4.public.a*b")

    def test_v4_local_token(self, verifier: TokenVerifier) -> None:
        """A v4.local token is never accepted by the public verifier."""
        with pytest.raises(AuthError, match="wrong header"):
            verifier.verify_bearer(bearer("v4.local." + paseto.b64encode(b"x" * 100)))

    def test_unknown_kid(self, verifier: TokenVerifier) -> None:
        """A token naming a key that is not in the keyring fails."""
        rogue_kid = paserk.pid(paserk.public_key_of(ROGUE_SECRET))
        token = token_for(payload(), secret=ROGUE_SECRET, kid=rogue_kid)
        with pytest.raises(AuthError, match="unknown or retired key"):
            verifier.verify_bearer(bearer(token))

    def test_untrusted_key_claiming_trusted_kid(self, verifier: TokenVerifier) -> None:
        """Naming a trusted kid does not help a token signed by another key."""
        token = token_for(payload(), secret=ROGUE_SECRET, kid=KID)
        with pytest.raises(AuthError, match="bad token signature"):
            verifier.verify_bearer(bearer(token))

    def test_missing_or_odd_footer(self, verifier: TokenVerifier) -> None:
        """No footer, or a footer without a k4.pid kid, is malformed."""
        no_footer = paseto.sign(SECRET, orjson.dumps(payload()), b"", IMPLICIT_ASSERTION)
        with pytest.raises(AuthError, match="no key id"):
            verifier.verify_bearer(bearer(no_footer))
        odd = paseto.sign(SECRET, orjson.dumps(payload()), b'{"kid":1}', IMPLICIT_ASSERTION)
        with pytest.raises(AuthError, match=r"no k4\.pid key id"):
            verifier.verify_bearer(bearer(odd))

    def test_wrong_implicit_assertion(self, verifier: TokenVerifier) -> None:
        """A token minted for another system (other implicit assertion) fails."""
        token = token_for(payload(), implicit=b"some-other-system/v1")
        with pytest.raises(AuthError, match="bad token signature"):
            verifier.verify_bearer(bearer(token))

    def test_tampered_payload(self, verifier: TokenVerifier) -> None:
        """A token whose payload bytes were changed fails the signature."""
        token = token_for(payload())
        head, body, footer = token.rsplit(".", 2)
        body = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
        with pytest.raises(AuthError, match="bad token signature"):
            verifier.verify_bearer(bearer(f"{head}.{body}.{footer}"))

    def test_truncated(self, verifier: TokenVerifier) -> None:
        """A token cut short fails."""
        token = token_for(payload())
        with pytest.raises(AuthError):
            verifier.verify_bearer(bearer(token[: len(token) // 2]))

    def test_oversized_and_non_ascii(self, verifier: TokenVerifier) -> None:
        """Oversized and non-ASCII tokens are refused before any hashing or crypto."""
        with pytest.raises(AuthError, match="too long"):
            verifier.verify_bearer(bearer("v4.public." + "A" * paseto.MAX_TOKEN_LEN))
        with pytest.raises(AuthError, match="not ASCII"):
            verifier.verify_bearer(bearer(token_for(payload()) + "ü"))

    def test_bad_claims(self, verifier: TokenVerifier) -> None:
        """A validly signed token with unusable claims is refused, naming the claim."""
        with pytest.raises(AuthError, match="invalid token claims: claim 'exp'"):
            verifier.verify_bearer(bearer(token_for(payload(exp=12345))))

    def test_expired_one_second_beyond_leeway(
        self, verifier: TokenVerifier, clock: FakeClock
    ) -> None:
        """exp + leeway + 1 s is expired; exp + leeway - 1 s still passes."""
        token = token_for(payload())
        exp = (NOW + timedelta(hours=1)).timestamp()
        clock.now = exp + DEFAULT_LEEWAY - 1
        verifier.verify_bearer(bearer(token))
        clock.now = exp + DEFAULT_LEEWAY + 1
        with pytest.raises(AuthError, match="token expired"):
            TokenVerifier(Keyring([PUBLIC]), clock=clock).verify_bearer(bearer(token))

    def test_not_yet_valid(self, verifier: TokenVerifier, clock: FakeClock) -> None:
        """A token whose nbf is beyond now + leeway is refused; within leeway it passes."""
        clock.now = NOW.timestamp() - DEFAULT_LEEWAY - 1
        with pytest.raises(AuthError, match="not yet valid"):
            verifier.verify_bearer(bearer(token_for(payload())))
        clock.now = NOW.timestamp() - DEFAULT_LEEWAY + 1
        verifier.verify_bearer(bearer(token_for(payload())))

    def test_revoked(self, clock: FakeClock) -> None:
        """A revoked key id is refused however valid its token."""
        revoked = RevocationList(["key_0123456789abcdef"])
        verifier = TokenVerifier(Keyring([PUBLIC]), revoked, clock=clock)
        with pytest.raises(AuthError, match="token revoked"):
            verifier.verify_bearer(bearer(token_for(payload())))

    def test_errors_never_echo_the_token(self, verifier: TokenVerifier) -> None:
        """Whatever goes wrong, the message carries neither the token nor key material."""
        token = token_for(payload(exp="2020-01-01T00:00:00Z"))
        for header in (bearer(token), bearer(token[:-3]), bearer(token + "x")):
            with pytest.raises(AuthError) as info:
                verifier.verify_bearer(header)
            assert token.split(".")[2][:16] not in info.value.message
            assert KID not in info.value.message


class TestCache:
    def test_hit_returns_same_claims(self, verifier: TokenVerifier) -> None:
        """A second verify of the same token is served from the cache."""
        token = token_for(payload())
        first = verifier.verify_bearer(bearer(token))
        assert verifier.cached == 1
        assert verifier.verify_bearer(bearer(token)) is first

    def test_hit_honours_revocation(self, verifier: TokenVerifier) -> None:
        """Revoking after a token was cached refuses it; unrevoking allows it again."""
        token = token_for(payload())
        verifier.verify_bearer(bearer(token))
        verifier.revocations.revoke("key_0123456789abcdef")
        with pytest.raises(AuthError, match="token revoked"):
            verifier.verify_bearer(bearer(token))
        verifier.revocations.unrevoke("key_0123456789abcdef")
        verifier.verify_bearer(bearer(token))

    def test_hit_honours_expiry(self, verifier: TokenVerifier, clock: FakeClock) -> None:
        """A cached token still expires on time."""
        token = token_for(payload())
        verifier.verify_bearer(bearer(token))
        clock.now = (NOW + timedelta(hours=1)).timestamp() + DEFAULT_LEEWAY + 1
        with pytest.raises(AuthError, match="token expired"):
            verifier.verify_bearer(bearer(token))

    def test_removing_key_drops_its_cached_tokens(self, verifier: TokenVerifier) -> None:
        """Retiring a key from the keyring takes effect for cached tokens at once."""
        token = token_for(payload())
        verifier.verify_bearer(bearer(token))
        assert verifier.keyring.remove(KID) is True
        assert verifier.cached == 0
        with pytest.raises(AuthError, match="unknown or retired key"):
            verifier.verify_bearer(bearer(token))

    def test_lru_is_bounded(self, clock: FakeClock) -> None:
        """The cache never holds more than cache_size tokens and evicts the oldest."""
        verifier = TokenVerifier(Keyring([PUBLIC]), clock=clock, cache_size=2)
        tokens = [token_for(payload(jti=f"j{i}")) for i in range(3)]
        for token in tokens:
            verifier.verify_bearer(bearer(token))
        assert verifier.cached == 2
        verifier.keyring.remove(KID)
        assert verifier.cached == 0

    def test_failures_are_not_cached(self, verifier: TokenVerifier) -> None:
        """Only verified tokens enter the cache."""
        with pytest.raises(AuthError):
            verifier.verify_bearer(bearer(token_for(payload(), secret=ROGUE_SECRET)))
        assert verifier.cached == 0


class TestKeyring:
    def test_kid_is_the_k4_pid(self) -> None:
        """add() returns the key's k4.pid and the keyring maps it back to the key."""
        keyring = Keyring()
        assert keyring.add(PUBLIC) == KID
        assert dict(keyring) == {KID: PUBLIC}

    def test_rotation(self) -> None:
        """A new key can be added and the old one removed at run time."""
        keyring = Keyring([PUBLIC])
        new_kid = keyring.add(paserk.public_key_of(ROGUE_SECRET))
        assert keyring.remove(KID) is True
        assert keyring.remove(KID) is False
        assert list(keyring) == [new_kid]


class TestRevocationList:
    def test_replace_all(self) -> None:
        """replace_all swaps the whole set; revoke and unrevoke edit it."""
        revoked = RevocationList(["a"])
        revoked.revoke("b")
        revoked.unrevoke("a")
        assert "b" in revoked and "a" not in revoked
        revoked.replace_all(["c"])
        assert "b" not in revoked and "c" in revoked and len(revoked) == 1


class TestParseClaims:
    def test_full_claims(self) -> None:
        """Every claim is read into its typed field; times are aware UTC."""
        claims = parse_claims(
            orjson.dumps(
                payload(
                    iat="2025-06-01T14:00:00+02:00",
                    budget={"tokens": 1000, "usd": 5, "period": "day"},
                    rpm=60,
                    tpm=10_000,
                    routing={"mode": "cost", "quality_threshold": 0.7},
                    models=["gpt-4o", "claude-*"],
                )
            )
        )
        assert claims.iat == NOW and claims.iat.tzinfo is UTC
        assert claims.budget == Budget(tokens=1000, usd=5.0, period="day")
        assert claims.routing == Routing(mode="cost", quality_threshold=0.7)
        assert claims.models == ("gpt-4o", "claude-*")
        assert (claims.rpm, claims.tpm) == (60, 10_000)

    def test_unknown_claims_ignored(self) -> None:
        """Claims this gateway does not know are ignored."""
        assert parse_claims(orjson.dumps(payload(future_feature=True))).tenant == "acme"

    def test_to_json_round_trips(self) -> None:
        """to_json() is read back by parse_claims() to the same Claims."""
        claims = Claims(
            iss="gatekeeper",
            sub="key_1",
            jti="j",
            iat=NOW,
            nbf=NOW,
            exp=NOW + timedelta(days=1),
            tenant="t",
            budget=Budget(tokens=None, usd=1.5, period="total"),
            routing=Routing(mode="latency", quality_threshold=None),
            models=(),
        )
        assert parse_claims(claims.to_json()) == claims

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            ({"sub": None}, "claim 'sub' must be a non-empty string"),
            ({"tenant": 7}, "claim 'tenant' must be a non-empty string"),
            ({"exp": "2025-06-01"}, "claim 'exp' must be an RFC 3339 time"),
            ({"nbf": "2025-06-01T12:00:00"}, "claim 'nbf' must be an RFC 3339 time"),
            ({"rpm": "60"}, "claim 'rpm' must be an integer"),
            ({"tpm": True}, "claim 'tpm' must be an integer"),
            ({"budget": {"period": "day"}}, "must set 'tokens' or 'usd'"),
            ({"budget": {"tokens": 1, "period": "week"}}, "'budget.period' must be one of"),
            ({"budget": {"usd": -1}}, "'budget.usd' must be a finite number >= 0"),
            ({"routing": {"mode": "cheapest"}}, "'routing.mode' must be one of"),
            ({"routing": {"quality_threshold": 2}}, "between 0 and 1"),
            ({"models": "gpt-4o"}, "'models' must be a list"),
        ],
    )
    def test_wrong_types_are_named(self, overrides: dict[str, Any], reason: str) -> None:
        """A bad claim raises ClaimsError that names the claim and what is wrong."""
        body = payload()
        body.update(overrides)
        body = {k: v for k, v in body.items() if v is not None}
        with pytest.raises(ClaimsError, match=reason):
            parse_claims(orjson.dumps(body))

    def test_not_an_object(self) -> None:
        """A payload that is not a JSON object is refused."""
        with pytest.raises(ClaimsError, match="JSON object"):
            parse_claims(b"[]")
        with pytest.raises(ClaimsError, match="not JSON"):
            parse_claims(b"{")


class TestModelAllowed:
    def claims(self, models: tuple[str, ...] | None) -> Claims:
        return Claims("i", "s", "j", NOW, NOW, NOW, "t", models=models)

    def test_none_allows_every_model(self) -> None:
        """No models claim means every model."""
        assert model_allowed(self.claims(None), "anything")

    def test_exact_and_wildcard(self) -> None:
        """Exact names and '*' patterns match; nothing else does."""
        claims = self.claims(("gpt-4o", "claude-*", "*-mini"))
        assert model_allowed(claims, "gpt-4o")
        assert model_allowed(claims, "claude-3-5-sonnet")
        assert model_allowed(claims, "o4-mini")
        assert not model_allowed(claims, "gpt-4o-2024")
        assert not model_allowed(claims, "GPT-4O")

    def test_other_glob_characters_are_literal(self) -> None:
        """Only '*' is special: '?' and '[...]' match themselves."""
        claims = self.claims(("gpt-?", "m[ab]"))
        assert not model_allowed(claims, "gpt-4")
        assert model_allowed(claims, "gpt-?")
        assert not model_allowed(claims, "ma")

    def test_empty_list_allows_nothing(self) -> None:
        """An empty models list allows no model."""
        assert not model_allowed(self.claims(()), "gpt-4o")


class TestMintedTokens:
    def test_mint_verifies(self, verifier: TokenVerifier) -> None:
        """A token from mint() verifies with the limits it was minted with."""
        token = mint(SECRET, "acme", budget_usd=10.0, rpm=5, models=["gpt-*"], now=NOW)
        claims = verifier.verify_bearer(bearer(token))
        assert claims.tenant == "acme" and claims.rpm == 5
        assert claims.budget == Budget(tokens=None, usd=10.0, period="month")
        assert claims.sub.startswith("key_") and len(claims.sub) == 20
        assert claims.exp - claims.iat == timedelta(days=30)
