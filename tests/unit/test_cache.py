"""Pure parts of the result cache: policy, canonical key, signed entries, policy lookup."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gatekeeper.auth.claims import CacheClaim, Claims
from gatekeeper.cache.entry import CachedAnswer, EntryRejected, open_entry, seal_entry, split_value
from gatekeeper.cache.flight import StreamFlight, copy_error
from gatekeeper.cache.policy import (
    KEY_DOMAIN,
    CachePolicy,
    _canonical,
    cache_key,
    decide,
    is_deterministic,
)
from gatekeeper.cache.secret import create_cache_secret, load_cache_secret
from gatekeeper.cache.settings import CacheConfig, policy_for
from gatekeeper.errors import ConfigError, RateLimited
from gatekeeper.providers.base import Usage

SECRET = b"s" * 32
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


class TestDecide:
    def test_no_policy_is_bypass(self) -> None:
        assert decide(None, "m", BODY, None).bypass

    def test_cache_control(self) -> None:
        p = CachePolicy()
        assert decide(p, "m", BODY, None) == decide(p, "m", BODY, "max-age=0")
        d = decide(p, "m", BODY, "No-Cache")
        assert (d.lookup, d.store) == (False, True)
        d = decide(p, "m", BODY, "no-store")
        assert (d.lookup, d.store) == (True, False)
        assert decide(p, "m", BODY, "no-cache, no-store").bypass

    def test_nondeterministic_only_by_policy(self) -> None:
        hot = {**BODY, "temperature": 0.5}
        assert decide(CachePolicy(), "m", hot, None).reason == "nondeterministic"
        assert not decide(CachePolicy(nondeterministic=True), "m", hot, None).bypass
        assert is_deterministic({**hot, "seed": 3}) and not is_deterministic({"messages": []})

    def test_models_glob(self) -> None:
        p = CachePolicy(models=("gpt-4o*",))
        assert not decide(p, "gpt-4o-mini", BODY, None).bypass
        assert decide(p, "claude", BODY, None).reason == "model_not_covered"


class TestKey:
    def test_canonical_and_complete(self) -> None:
        """Key order does not matter; tenant, model, ingress, stream and sampling do."""
        k = cache_key(SECRET, "acme", "chat", "m", False, BODY)
        assert k == cache_key(SECRET, "acme", "chat", "m", False, dict(reversed(BODY.items())))
        assert k == cache_key(SECRET, "acme", "chat", "m", False, {**BODY, "user": "u1"})
        others = {
            cache_key(SECRET, "globex", "chat", "m", False, BODY),
            cache_key(SECRET, "acme", "messages", "m", False, BODY),
            cache_key(SECRET, "acme", "chat", "m2", False, BODY),
            cache_key(SECRET, "acme", "chat", "m", True, BODY),
            cache_key(SECRET, "acme", "chat", "m", False, {**BODY, "top_p": 0.5}),
            cache_key(SECRET, "acme", "chat", "m", False, BODY, {"system": "x"}),
        }
        assert k not in others and len(others) == 6
        assert k.startswith("acme.m.")

    def test_keyed_by_the_secret(self) -> None:
        """Without the secret, hashing a guessed request does not find its key."""
        k = cache_key(SECRET, "acme", "chat", "m", False, BODY)
        assert k != cache_key(b"t" * 32, "acme", "chat", "m", False, BODY)
        material = {"tenant": "acme", "ingress": "chat", "model": "m", "stream": False}
        material |= {"body": {k: v for k, v in BODY.items()}, "native": None}
        for domain in (KEY_DOMAIN, b"gatekeeper.cache.key.v1\n"):  # the old plain SHA-256
            assert hashlib.sha256(domain + _canonical(material)).hexdigest() not in k


class TestSecret:
    def test_created_once_private_and_loaded(self, tmp_path: Path) -> None:
        path = tmp_path / "keys" / "cache.secret"
        first = load_cache_secret(str(create_cache_secret(path)))
        assert len(first) == 32 and os.stat(path).st_mode & 0o077 == 0
        assert load_cache_secret(str(create_cache_secret(path))) == first  # never replaced

    def test_dev_setup_creates_it_in_the_state_dir(self, tmp_path: Path) -> None:
        from gatekeeper.cli import ensure_dev_cache_secret
        from gatekeeper.config import Config

        off = Config(state_dir=str(tmp_path))
        assert ensure_dev_cache_secret(off) is off  # cache off: nothing created
        on = Config(state_dir=str(tmp_path), cache=CacheConfig(enabled=True))
        path = ensure_dev_cache_secret(on).cache.key_secret_file
        assert (
            path == str(tmp_path / "keys" / "cache.secret") and len(load_cache_secret(path)) == 32
        )

    @pytest.mark.parametrize("problem", ["unset", "missing", "short", "open"])
    def test_bad_secret_files_are_config_errors(self, tmp_path: Path, problem: str) -> None:
        path = tmp_path / "s"
        path.write_bytes(b"x" * (8 if problem == "short" else 32))
        path.chmod(0o644 if problem == "open" else 0o600)
        name = {"unset": "", "missing": str(tmp_path / "nope")}.get(problem, str(path))
        with pytest.raises(ConfigError, match=r"cache\.key_secret_file"):
            load_cache_secret(name)


class TestEntry:
    key = SigningKey.generate()

    def _sealed(self, answer: CachedAnswer, exp: float = 200.0) -> tuple[bytes, bytes]:
        return seal_entry(self.key, "n1", "acme.m.h", "acme", answer, exp)

    def _open(self, line: bytes, payload: bytes, key: str = "acme.m.h", tenant: str = "acme"):
        header, _ = split_value(line + b"\n")
        return open_entry(header, payload, key, tenant, 100.0, lambda n: (self.key.verify_key,))

    def test_round_trip_json_and_sse(self) -> None:
        for answer in (
            CachedAnswer("m", Usage(7, 5), body=b'{"a":1}'),
            CachedAnswer("m", None, chunks=(b"data: 1\n\n", b"data: 2\n\n")),
        ):
            assert self._open(*self._sealed(answer)) == answer

    @pytest.mark.parametrize(
        "tamper, reason",
        [
            (lambda h, p: (h, p + b"x"), "digest_mismatch"),
            (lambda h, p: (h.replace(b'"n1"', b'"n2"'), p), "bad_signature"),
            (lambda h, p: (h.replace(b'"usage":[7,5]', b'"usage":[0,0]'), p), "bad_signature"),
        ],
    )
    def test_tampered_entries_are_rejected(self, tamper, reason) -> None:  # type: ignore[no-untyped-def]
        line, payload = self._sealed(CachedAnswer("m", Usage(7, 5), body=b"{}"))
        with pytest.raises(EntryRejected) as info:
            self._open(*tamper(line, payload))
        assert info.value.reason == reason

    def test_bound_to_key_tenant_and_time(self) -> None:
        line, payload = self._sealed(CachedAnswer("m", None, body=b"{}"))
        for key, tenant in (("acme.m.other", "acme"), ("acme.m.h", "globex")):
            with pytest.raises(EntryRejected, match="key_mismatch"):
                self._open(line, payload, key, tenant)
        with pytest.raises(EntryRejected, match="expired"):
            self._open(*self._sealed(CachedAnswer("m", None, body=b"{}"), exp=50.0))

    def test_foreign_signer_and_garbage(self) -> None:
        other = SigningKey.generate()
        line, payload = seal_entry(other, "n1", "acme.m.h", "acme", CachedAnswer("m", None), 200)
        with pytest.raises(EntryRejected, match="bad_signature"):
            self._open(line, payload)
        for junk in (b"\x00", b"[]", b'{"v": 1}'):
            with pytest.raises(EntryRejected):
                split_value(junk + b"\n")


def _claims(cache: CacheClaim | None) -> Claims:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    return Claims("i", "k", "j", t, t, t, "acme", cache=cache)


class TestPolicyFor:
    def test_claim_over_default_and_ttl_cap(self) -> None:
        cfg = CacheConfig(enabled=True, default=CachePolicy(ttl_s=10), max_ttl_s=100)
        assert policy_for(_claims(None), cfg) == CachePolicy(ttl_s=10)
        assert policy_for(_claims(CacheClaim(enabled=False)), cfg) is None
        mine = policy_for(_claims(CacheClaim(ttl_s=1000, charge="cost")), cfg)
        assert mine == CachePolicy(ttl_s=100, charge="cost")
        assert policy_for(_claims(None), CacheConfig(enabled=True)) is None


def test_copy_error_keeps_class_and_own_headers() -> None:
    err = RateLimited("slow down", retry_after=2)
    clone = copy_error(err)
    clone.headers["x"] = "1"
    assert type(clone) is RateLimited and clone.message == "slow down" and "x" not in err.headers


def test_stream_flight_replays_to_each_waiter_from_the_start() -> None:
    async def run() -> list[list[bytes]]:
        from gatekeeper.providers.base import StreamState

        flight = StreamFlight("k", max_bytes=1 << 20)
        state = StreamState()
        flight.started.set_result((None, (), state))  # type: ignore[arg-type]
        await flight.push(b"a")
        early = await flight.subscribe(leader=True, state=None)
        await flight.push(b"b")
        late = await flight.subscribe(leader=False, state=StreamState())
        flight.end(None)
        out = []
        for served in (early, late):
            out.append([served.result.first] + [c async for c in served.result.rest])
        return out

    assert asyncio.run(run()) == [[b"a", b"b"], [b"a", b"b"]]
