"""Privacy Pass decisions with no server: encoding, keys and epochs, issuance, redemption."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import httpx
import pytest

from gatekeeper.auth.claims import Claims, ClaimsError, Passes, parse_claims
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.config import parse_config
from gatekeeper.errors import AuthError, ConfigError, InvalidRequest, PermissionDenied, RateLimited
from gatekeeper.passes import Wallet, wire
from gatekeeper.passes.issuer import Issuer, allowance, directory
from gatekeeper.passes.keys import KeyStore, epochs_accepted
from gatekeeper.passes.redeem import Redeemer, is_private_token, refuse_second_authorization
from gatekeeper.passes.wallet import begin, complete

T0 = 1_764_619_200.0  # 2025-12-01T20:00:00Z, an hour boundary
SECRET = b"k" * 32
CHALLENGE = wire.token_challenge("gatekeeper", "")


def _policy(tenant: str, **over: object) -> Claims:
    epoch = datetime.fromtimestamp(0, UTC)
    return Claims("gatekeeper", f"tenant={tenant}", "pp", epoch, epoch, epoch, tenant, **over)  # type: ignore[arg-type]


def _key_claims(tenant: str = "acme", **over: object) -> Claims:
    now = datetime.fromtimestamp(T0, UTC)
    return Claims("gatekeeper", "key_1", "j", now, now, now, tenant, **over)  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


class MemorySpent:
    """An in-memory SpentStore (the NATS one is covered by the integration tests)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, bytes, bytes]] = set()
        self.forgotten: list[str] = []
        self.opened: set[str] = set()

    async def spend(self, epoch: str, key_id: bytes, nonce: bytes) -> bool:
        if (epoch, key_id, nonce) in self.seen:
            return False
        self.seen.add((epoch, key_id, nonce))
        return True

    async def forget(self, epoch: str) -> None:
        self.forgotten.append(epoch)

    async def open(self, epoch: str) -> None:
        self.opened.add(epoch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(clock: Clock) -> KeyStore:
    return KeyStore(SECRET, {"acme": _policy("acme"), "beta": _policy("beta")}, clock=clock)


def _issuer(keys: KeyStore, clock: Clock, default_count: int = 5) -> Issuer:
    return Issuer(keys, BudgetLedger("n1"), default_count=default_count, clock=clock.dt)


def _passes(issuer: Issuer, claims: Claims, n: int, *, batch: bool = True) -> list[str]:
    key = issuer.key_for(claims)
    pending, body = begin(key.public_key, CHALLENGE, n, batch=batch)
    return complete(pending, issuer.issue(claims, body, batch=batch))


def _header(token: str) -> str:
    return f'PrivateToken token="{token}"'


class TestWire:
    def test_challenge_encoding_matches_rfc9578_vector(self) -> None:
        """A.1 case 2: issuer.example, no redemption context, origin.example."""
        expected = "0001000e6973737565722e6578616d706c6500000e6f726967696e2e6578616d706c65"
        assert wire.token_challenge("issuer.example", "origin.example").hex() == expected

    def test_challenge_header_names_the_key_only_when_known(self) -> None:
        assert wire.challenge_header(b"\x00\x01", None) == 'PrivateToken challenge="AAE"'
        both = wire.challenge_header(b"\x00\x01", b"\xff")
        assert both == 'PrivateToken challenge="AAE", token-key="_w"'

    @pytest.mark.parametrize(
        "spelling",
        [
            lambda t: f'PrivateToken token="{wire.b64url(t)}"',
            lambda t: f"privatetoken token={wire.b64url(t)}",
            lambda t: f'PrivateToken token="{base64.b64encode(t).decode()}"',
            lambda t: f'PrivateToken  token = "{base64.urlsafe_b64encode(t).decode()}" ',
        ],
    )
    def test_token_parameter_spellings(self, spelling: object) -> None:
        raw = b"\x00\x01" + bytes(range(144))
        assert wire.parse_private_token(spelling(raw)).to_bytes() == raw  # type: ignore[operator]

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            ("PrivateToken", "no token"),
            ('PrivateToken challenge="AAE"', "no token"),
            ('PrivateToken token="!!!"', "not base64url"),
            ('PrivateToken token="' + "A" * 5000 + '"', "not base64url"),
            ('PrivateToken token="AAE"', "146 bytes"),
            (_header(wire.b64url(b"\x00\x02" + bytes(144))), "unsupported token type"),
            (_header("AA") + ', token="AA"', "given twice"),
            ("PrivateToken token=AA extra", "malformed"),
        ],
    )
    def test_malformed_authorization_is_refused(self, header: str, reason: str) -> None:
        with pytest.raises(wire.WireError, match=reason):
            wire.parse_private_token(header)

    def test_requests_have_exact_lengths(self) -> None:
        with pytest.raises(wire.WireError, match="52 bytes"):
            wire.parse_token_request(b"\x00\x01\x00" + bytes(48))
        with pytest.raises(wire.WireError, match="token type"):
            wire.parse_token_request(b"\x00\x02\x00" + bytes(49))
        with pytest.raises(wire.WireError, match="elements"):
            wire.parse_batch_request(b"\x00\x01\x00\x00\x31" + bytes(48))
        with pytest.raises(wire.WireError, match="elements"):
            wire.parse_batch_request(b"\x00\x01\x00\x00\x00")
        too_many = bytes(49) * (wire.MAX_BATCH + 1)
        with pytest.raises(wire.WireError, match="elements"):
            wire.parse_batch_request(b"\x00\x01\x00" + len(too_many).to_bytes(2, "big") + too_many)

    def test_scheme_detection_is_case_blind_and_ignores_bearer(self) -> None:
        assert is_private_token('PRIVATETOKEN token="x"')
        assert not is_private_token("Bearer v4.public.x")
        assert not is_private_token(None)

    def test_a_second_authorization_header_is_refused(self) -> None:
        refuse_second_authorization([(b"authorization", b"PrivateToken"), (b"host", b"x")])
        with pytest.raises(InvalidRequest) as info:
            refuse_second_authorization([(b"authorization", b"a"), (b"Authorization", b"b")])
        assert info.value.code == "ambiguous_authorization"


class TestClaimsAndConfig:
    def test_passes_claim_round_trips(self) -> None:
        claims = _key_claims(passes=Passes("hour", 50))
        assert parse_claims(claims.to_json()).passes == Passes("hour", 50)

    def test_passes_claim_is_validated(self) -> None:
        body = _key_claims().to_dict()
        with pytest.raises(ClaimsError, match=r"passes\.per"):
            parse_claims(__import__("orjson").dumps({**body, "passes": {"per": "week"}}))

    def test_allowance_defaults_to_rpm_per_epoch_then_config(self) -> None:
        assert allowance(_key_claims(passes=Passes("day", 7)), "hour", 9) == ("day", 7)
        assert allowance(_key_claims(rpm=10), "hour", 9) == ("hour", 600)
        assert allowance(_key_claims(), "hour", 9) == ("hour", 9)

    def test_config_section_names_the_path(self) -> None:
        with pytest.raises(ConfigError, match=r"passes\.secret_file"):
            parse_config({"passes": {"enabled": True}})
        with pytest.raises(ConfigError, match=r"passes\.tenants\.acme: claim .rpm."):
            parse_config({"passes": {"tenants": {"acme": {"rpm": 0}}}})
        with pytest.raises(ConfigError, match=r"passes\.tenants\.acme\.jti: unknown key"):
            parse_config({"passes": {"tenants": {"acme": {"jti": "x"}}}})
        cfg = parse_config({"passes": {"tenants": {"acme": {"rpm": 5, "models": ["m"]}}}})
        ((name, policy),) = cfg.passes.tenants
        assert (name, policy.sub, policy.rpm, policy.models) == ("acme", "tenant=acme", 5, ("m",))

    def test_audit_names_the_token_key_not_a_key_id(self) -> None:
        assert _key_claims().audit_key_id == "key_1"
        assert _policy("acme", pass_key="ab").audit_key_id == "pp:ab"


class TestKeyStore:
    def test_epochs_are_utc_windows_newest_first(self) -> None:
        assert epochs_accepted("hour", 2, T0 + 5) == [
            ("h2025120120", int(T0)),
            ("h2025120119", int(T0) - 3600),
            ("h2025120118", int(T0) - 7200),
        ]

    def test_same_secret_same_keys_on_every_node(self, clock: Clock) -> None:
        a = KeyStore(SECRET, {"acme": _policy("acme")}, clock=clock).current("acme")
        b = KeyStore(SECRET, {"acme": _policy("acme")}, clock=clock).current("acme")
        other = KeyStore(b"x" * 32, {"acme": _policy("acme")}, clock=clock).current("acme")
        assert a is not None and b is not None and other is not None
        assert a.public_key == b.public_key != other.public_key

    def test_tenants_have_distinct_keys(self, keys: KeyStore) -> None:
        acme, beta = keys.current("acme"), keys.current("beta")
        assert acme is not None and beta is not None and acme.key_id != beta.key_id
        assert keys.current("gamma") is None

    def test_rotation_keeps_grace_epochs_then_retires(self, keys: KeyStore, clock: Clock) -> None:
        first = keys.current("acme")
        assert first is not None
        clock.t += 3600
        second = keys.current("acme")
        assert second is not None and second.key_id != first.key_id
        assert keys.lookup(first.key_id) is first  # within grace
        assert [k.epoch for k in keys.accepted("acme")] == ["h2025120121", "h2025120120"]
        clock.t += 3600
        assert keys.lookup(first.key_id) is None
        assert keys.tenant_of_retired(first.key_id) == "acme"
        assert keys.dropped == ["h2025120120"]

    def test_next_epoch_keys_can_be_derived_ahead(self, keys: KeyStore, clock: Clock) -> None:
        """``prepare`` derives what the next epoch needs; the roll then derives nothing."""
        keys.refresh()
        upcoming = keys.upcoming()
        assert sorted(t for t, _, _ in upcoming) == ["acme", "beta"]
        assert {e for _, e, _ in upcoming} == {"h2025120121"}
        for tenant, epoch, start in upcoming:
            keys.prepare(tenant, epoch, start)
        assert keys.upcoming() == []
        prepared = dict(keys._prepared)
        clock.t += 3600
        assert keys.current("acme") is prepared[("acme", "h2025120121")]

    def test_a_pass_is_charged_as_the_tenant(self, keys: KeyStore) -> None:
        key = keys.current("acme")
        assert key is not None
        assert key.claims.sub == "tenant=acme" and key.claims.tenant == "acme"
        assert key.claims.pass_key == key.key_id.hex()
        assert key.claims.exp.timestamp() == T0 + 7200


class TestIssuer:
    def test_single_and_batched_issuance_verify_client_side(
        self, keys: KeyStore, clock: Clock
    ) -> None:
        issuer = _issuer(keys, clock)
        assert len(_passes(issuer, _key_claims(), 1, batch=False)) == 1
        assert len(_passes(issuer, _key_claims(), 3)) == 3

    def test_allowance_is_counted_per_key_and_window(self, keys: KeyStore, clock: Clock) -> None:
        issuer = _issuer(keys, clock, default_count=4)
        _passes(issuer, _key_claims(), 3)
        with pytest.raises(RateLimited, match="Privacy Passes"):
            _passes(issuer, _key_claims(), 2)
        _passes(issuer, _key_claims(), 1)  # a refusal costs nothing
        clock.t += 3600
        assert len(_passes(issuer, _key_claims(), 4)) == 4  # a new window

    def test_wrong_key_and_bad_points_are_400_and_cost_nothing(
        self, keys: KeyStore, clock: Clock
    ) -> None:
        issuer = _issuer(keys, clock, default_count=1)
        beta = keys.current("beta")
        assert beta is not None
        _, body = begin(beta.public_key, CHALLENGE, 1, batch=False)
        with pytest.raises(InvalidRequest) as info:
            issuer.issue(_key_claims(), body, batch=False)
        if info.value.code != "token_key_mismatch":  # 1 in 256: beta's id ends the same
            pytest.skip("the two key ids share their last byte")
        acme = keys.current("acme")
        assert acme is not None
        bad = wire.token_request(acme.key_id, b"\x02" + b"\xff" * 48)
        with pytest.raises(InvalidRequest, match="not a valid P-384 point"):
            issuer.issue(_key_claims(), bad, batch=False)
        assert len(_passes(issuer, _key_claims(), 1)) == 1

    def test_tenant_without_passes_is_403(self, keys: KeyStore, clock: Clock) -> None:
        with pytest.raises(PermissionDenied):
            _issuer(keys, clock).issue(_key_claims("gamma"), b"", batch=False)

    def test_directory_lists_accepted_keys(self, keys: KeyStore, clock: Clock) -> None:
        clock.t += 3600
        body = directory(keys.accepted("acme"), "/issue")
        assert body["issuer-request-uri"] == "/issue"
        assert [k["not-before"] for k in body["token-keys"]] == [int(T0) + 3600, int(T0)]
        assert all(k["token-type"] == 1 for k in body["token-keys"])


class TestRedeemer:
    @pytest.fixture
    def spent(self) -> MemorySpent:
        return MemorySpent()

    @pytest.fixture
    def redeemer(self, keys: KeyStore, spent: MemorySpent) -> Redeemer:
        return Redeemer(keys, spent, CHALLENGE)

    async def _refused(self, redeemer: Redeemer, header: str) -> AuthError:
        with pytest.raises(AuthError) as info:
            await redeemer.redeem(header)
        assert info.value.headers["www-authenticate"].startswith("PrivateToken challenge=")
        return info.value

    async def test_a_pass_redeems_once_as_its_tenant(
        self, keys: KeyStore, clock: Clock, redeemer: Redeemer
    ) -> None:
        (token,) = _passes(_issuer(keys, clock), _key_claims(), 1)
        claims = await redeemer.redeem(_header(token))
        assert claims.tenant == "acme" and claims.sub == "tenant=acme"
        err = await self._refused(redeemer, _header(token))
        assert err.code == "private_token_spent"
        acme = keys.current("acme")
        assert acme is not None
        assert f'token-key="{wire.b64url(acme.public_key)}"' in err.headers["www-authenticate"]

    async def test_forged_and_cross_tenant_tokens_are_invalid(
        self, keys: KeyStore, clock: Clock, redeemer: Redeemer, spent: MemorySpent
    ) -> None:
        (token,) = _passes(_issuer(keys, clock), _key_claims("beta"), 1)
        raw = wire.b64url_decode(token, limit=400)
        acme = keys.current("acme")
        assert acme is not None
        as_acme = raw[:66] + acme.key_id + raw[98:]  # beta's pass relabelled as acme's
        err = await self._refused(redeemer, _header(wire.b64url(as_acme)))
        assert err.code == "private_token_invalid"
        flipped = raw[:-1] + bytes([raw[-1] ^ 1])
        assert (await self._refused(redeemer, _header(wire.b64url(flipped)))).code == (
            "private_token_invalid"
        )
        assert not spent.seen  # nothing unauthenticated reaches the spent store

    async def test_passes_expire_after_the_grace_window(
        self, keys: KeyStore, clock: Clock, redeemer: Redeemer, spent: MemorySpent
    ) -> None:
        first, second = _passes(_issuer(keys, clock), _key_claims(), 2)
        clock.t += 3600
        await redeemer.redeem(_header(first))  # previous epoch: within grace
        clock.t += 3600
        err = await self._refused(redeemer, _header(second))
        assert err.code == "private_token_unknown_key"
        assert "token-key=" in err.headers["www-authenticate"]  # a retired acme key
        await redeemer.housekeeping()
        assert spent.forgotten == ["h2025120120"]
        assert spent.opened == {"h2025120121", "h2025120122"}

    async def test_another_challenge_and_garbage_are_refused(
        self, keys: KeyStore, clock: Clock, redeemer: Redeemer
    ) -> None:
        acme = keys.current("acme")
        assert acme is not None
        other = wire.token_challenge("someone-else")
        pending, body = begin(acme.public_key, other, 1, batch=False)
        (token,) = complete(pending, _issuer(keys, clock).issue(_key_claims(), body, batch=False))
        assert (await self._refused(redeemer, _header(token))).code == (
            "private_token_wrong_challenge"
        )
        err = await self._refused(redeemer, 'PrivateToken token="%%%"')
        assert err.code == "private_token_malformed"
        assert "token-key" not in err.headers["www-authenticate"]
        unknown = wire.b64url(
            b"\x00\x01" + bytes(32) + hashlib.sha256(CHALLENGE).digest() + bytes(80)
        )
        assert (await self._refused(redeemer, _header(unknown))).code == (
            "private_token_unknown_key"
        )


class TestWalletAuth:
    """``Wallet`` as ``httpx.Auth`` against ``httpx.MockTransport`` (no server)."""

    @staticmethod
    def _client(
        wallet: Wallet, statuses: list[tuple[int, dict[str, str]]]
    ) -> tuple[httpx.Client, list[str]]:
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["authorization"])
            status, headers = statuses.pop(0)
            return httpx.Response(status, headers=headers, json={})

        return httpx.Client(transport=httpx.MockTransport(handler), auth=wallet), seen

    def test_each_request_spends_one_pass_in_place_of_the_sdk_key(self) -> None:
        wallet = Wallet(["p1", "p2"])
        client, seen = self._client(wallet, [(200, {}), (200, {})])
        client.get("http://gw/v1/models", headers={"authorization": "Bearer sdk-key"})
        assert seen == ['PrivateToken token="p1"'] and wallet.unused() == ["p2"]

    def test_a_refused_pass_is_replaced_once(self) -> None:
        wallet = Wallet(["p1", "p2", "p3"])
        challenge = {"www-authenticate": 'PrivateToken challenge="AAE"'}
        client, seen = self._client(wallet, [(401, challenge), (401, challenge)])
        assert client.get("http://gw/v1/models").status_code == 401
        assert seen == ['PrivateToken token="p1"', 'PrivateToken token="p2"']
        assert wallet.unused() == ["p3"]

    def test_other_401s_are_not_retried(self) -> None:
        wallet = Wallet(["p1", "p2"])
        client, seen = self._client(wallet, [(401, {})])
        assert client.get("http://gw/v1/models").status_code == 401
        assert len(seen) == 1 and wallet.unused() == ["p2"]
